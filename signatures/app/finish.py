"""After a run: store the experiment, then its analysis, figures, attribution maps and report.

Used by ``run`` (:mod:`signatures.cli`) and by a job on a worker (:func:`signatures.app.jobs.run_job`).
Three things go on at once, so that both cores work: the attribution maps (TensorFlow, in a
thread), the analysis (this thread), and the saving of the experiment as soon as its UMAP maps
are there (a thread, waiting for the side process that fits them). What is stored is the same
as when the steps ran one after another; each file is written atomically.
"""

from pathlib import Path

from .._threads import in_thread

__all__ = ["finish_run"]


def finish_run(exp, path, *, overwrite=False, progress=None, stored=None):
    """Store ``exp`` (just run) in the folder ``path`` with everything the pages and the report show.

    Parameters
    ----------
    exp : Experiment
        From :func:`signatures.experiment.run_experiment`, with its model; its maps may still
        be pending (``projector=``).
    path : str or Path
        The experiment's folder (checked by :func:`signatures.store.check_output` already).
    overwrite : bool
    progress : callable, optional
        ``progress(stage, fraction, message)``: the maps' arrival (``projection``), ``saving``,
        the figures (``analysis``), the attribution maps (``explanation``). Every message after the
        experiment is stored comes after ``stored``.
    stored : callable, optional
        Called with no argument once the experiment is saved (a page may show it from then on).

    Returns
    -------
    dict
        The analysis (:func:`signatures.analysis.analyze`), also kept in the folder.

    Raises
    ------
    StoreError, OSError
        When the experiment itself cannot be saved. The files that follow it (analysis,
        figures, maps) only warn: the pages rebuild what is missing.
    """
    from ..analysis import analyze, save_analysis
    from ..explanations import explain_in_background, save_explanations
    from ..report import write_report
    from ..store import save_experiment
    from .view import PLOTS_FILE, build_plots_but_maps, write_plots

    path = Path(path)
    say = progress or (lambda *a: None)

    def save():
        exp.wait_for_maps(progress=say)
        say("saving", 0.0, f"saving to the store as {path.name}")
        try:
            save_experiment(exp, path, overwrite=overwrite)
        finally:
            exp.release_work_folder()
        if stored is not None:
            stored()

    explaining = explain_in_background(exp)  # TensorFlow's kernels release the GIL
    saving = in_thread(save, name="signatures-save")
    try:
        analysis = analyze(exp, input_row=exp.input_separation_row())  # reads no map: runs while they are fitted
        try:  # so do the pages' figures other than the maps
            view, layers = build_plots_but_maps(exp, analysis)
        except ValueError:  # built again below, where a failure is said
            view = layers = None
    except Exception:
        saving.exception()  # an experiment on its way to the store gets there whole (the pages analyse it)
        raise
    saving.result()  # raises what saving raised: nothing more is written then
    save_analysis(path, analysis)
    say("analysis", 0.8, "encoding the pages' figures once")
    try:  # the pages' figures, encoded once; a page rebuilds a missing file
        write_plots(exp, path, analysis=analysis, view=view, layers=layers)
    except (OSError, ValueError) as exc:
        say("analysis", 0.9, f"{path / PLOTS_FILE} not kept ({exc}); the pages will build the figures themselves")
    result, said = explaining.result()
    if result is not None:
        try:
            save_explanations(path, result)
        except OSError as exc:
            said = f"the attribution maps could not be kept ({exc.strerror or exc}); the pages will say there are none"
    say("explanation", 1.0, said)
    write_report(exp, path / "report.html", analysis=analysis)  # with the maps
    return analysis
