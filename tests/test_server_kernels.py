"""Kernels of the site: many start at once over IPC without a port race, and are counted per page."""

import asyncio
import shutil
import tempfile

import pytest

from signatures.app import server as site


@pytest.fixture
def connection_dir():
    """A short folder: an IPC socket's path must fit in 107 characters."""
    path = tempfile.mkdtemp(prefix="sig-k", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_many_kernels_start_at_once_over_ipc_and_are_counted_per_page(tmp_path, connection_dir):
    """The 30-visitor failure was a ZMQ port taken between choosing it and binding it; IPC has no ports."""
    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"
    n = 8

    async def run():
        manager = site.SiteKernelManager(config=config, connection_dir=connection_dir, root_dir=str(tmp_path))
        try:
            async def visit(page):
                token = site._PAGE.set({"page": page, "release": lambda: None})
                try:
                    return await manager.start_kernel(kernel_name="python3", path=str(tmp_path))
                finally:
                    site._PAGE.reset(token)

            pages = ["gallery.ipynb"] * (n - 2) + ["layers.ipynb"] * 2
            ids = await asyncio.gather(*(visit(page) for page in pages))
            assert len(set(ids)) == n
            for kid in ids:
                info = manager.get_kernel(kid).get_connection_info()
                assert info["transport"] == "ipc" and info["shell_port"] > 0
            # every kernel answers on its own sockets
            replies = []
            for kid in ids:
                client = manager.get_kernel(kid).client()
                client.start_channels()
                try:
                    await client.wait_for_ready(timeout=120)
                    reply = await client.execute_interactive("import os; print(os.getpid())", timeout=60)
                    replies.append(reply["content"]["status"])
                finally:
                    client.stop_channels()
            assert replies == ["ok"] * n
            assert manager.in_use() == (n, {"gallery.ipynb": n - 2, "layers.ipynb": 2})
            await manager.shutdown_kernel(ids[0])
            assert manager.in_use() == (n - 1, {"gallery.ipynb": n - 3, "layers.ipynb": 2})
        finally:
            await manager.shutdown_all()

    asyncio.run(run())


def test_pool_kernels_are_not_counted_until_handed_out(tmp_path, connection_dir):
    async def run():
        manager = site.SiteKernelManager(connection_dir=connection_dir, root_dir=str(tmp_path))
        try:
            kid = await manager.start_kernel(kernel_name="python3", path=str(tmp_path),
                                             env={"VOILA_PREHEAT": "True"})
            waiting = asyncio.get_running_loop().create_future()
            waiting.set_result({"kernel_id": kid})
            manager._pools = {"gallery.ipynb": [waiting]}  # as Voilà's pool holds a ready kernel
            manager.notebook_data = {"/srv/notebooks/gallery.ipynb": {"kernel_ids": {kid}}}
            assert manager.in_use() == (0, {})
            manager._pools["gallery.ipynb"].pop()  # handed out to a visitor
            assert manager.in_use() == (1, {"gallery.ipynb": 1})
        finally:
            await manager.shutdown_all()

    asyncio.run(run())


def test_ipc_only_where_the_socket_paths_fit(tmp_path):
    short = tempfile.mkdtemp(prefix="s", dir="/tmp")
    try:
        assert site.ipc_connection_root([short]) == short
        deep = tmp_path / ("d" * 60)
        deep.mkdir()
        assert site.ipc_connection_root([str(deep)]) is None, "a socket path past 107 characters cannot bind"
        assert site.ipc_connection_root([str(deep), short]) == short
        assert site.ipc_connection_root([str(tmp_path / "missing")]) is None
    finally:
        shutil.rmtree(short)
    args = site.voila_args()
    if site.ipc_connection_root() is not None:
        assert "--KernelManager.transport=ipc" in args
    else:
        assert not any("transport" in a for a in args)
