"""The app floor: the web site's apps, its server and the job client (see ``shared/STYLE.md``).

Nothing here is needed to run or browse an experiment from Python; it builds on the
pipeline, the questions and the views.
"""
