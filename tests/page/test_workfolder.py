"""The page's work folder: removed at the end, and by the next server when its own was killed."""
import fcntl

from dhrclip.page.workfolder import LOCK, PREFIX, WorkFolder, remove_abandoned


def test_abandoned_folders_go_and_live_or_unknown_ones_stay(tmp_path):
    abandoned, live, unknown = (tmp_path / f"{PREFIX}{name}" for name in ("dead", "live", "old"))
    for folder in (abandoned, live, unknown):
        (folder / "batch0").mkdir(parents=True)
        (folder / "batch0" / "upload.png").write_bytes(b"an upload")
    (abandoned / LOCK).touch()  # its server was killed: nobody holds the lock
    (live / LOCK).touch()
    with open(live / LOCK, "rb") as held:  # a running server holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with WorkFolder(tmp_path) as mine:
            assert mine.is_dir() and (mine / LOCK).is_file() and mine.name.startswith(PREFIX)
            assert not abandoned.exists() and live.exists() and unknown.exists()  # unknown: no lock file
            assert remove_abandoned(tmp_path) == 0  # this one is held too
            assert mine.exists()
        assert not mine.exists()
