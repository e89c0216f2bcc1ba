"""atomnet batch: many files and every frame, resumable, atomic, on dask."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "io"))
from microscope_files import write_hspy

from napari_atomnet.batch import plan_batch, run_batch
from napari_atomnet.cli_batch import register
from napari_atomnet.io import read_image, write_tiff
from napari_atomnet.pipeline import find_cells
from napari_atomnet.synth import render_gaussians

N_ATOMS = 36


def lattice_frame(seed, shift=(0.0, 0.0)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:6, 0:6] * 14.0 + 12.0
    clean = render_gaussians((96, 96), yy.ravel() + shift[0], xx.ravel() + shift[1], 300.0, 2.0)
    return rng.poisson(clean + 20.0).astype(np.float32)


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_tiff(folder / "single.tif", lattice_frame(0), pixel_size_nm=0.05)
    stack = np.stack([lattice_frame(i, (0.3 * i, -0.2 * i)) for i in range(5)])
    write_hspy(folder / "movie.hspy", stack, scale=0.4, units="Å", chunks=(1, 96, 96))
    (folder / "broken.dm4").write_bytes(b"not a dm4 file at all")
    return folder, stack


def test_batch_files_and_frames_resume(inputs, tmp_path):
    folder, _stack = inputs
    out = tmp_path / "out"
    seen = []
    res = run_batch(
        [folder], out, detector="classical", n_workers=0, progress=lambda d, t: seen.append((d, t))
    )
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    assert res.n_computed == 6 and res.n_failed == 1 and res.n_skipped == 0
    s = pd.read_csv(out / "summary.csv")
    assert len(s) == 7
    broken = s[s["input"].str.endswith("broken.dm4")]
    assert broken["status"].tolist() == ["error"] and "cannot read as" in broken["error"].iloc[0]
    ok = s[s["status"] == "ok"]
    assert (ok["n_atoms"] == N_ATOMS).all()
    frames = sorted(ok.loc[ok["input"].str.endswith("movie.hspy"), "frame"].astype(int))
    assert frames == [0, 1, 2, 3, 4]
    assert ok.loc[ok["input"].str.endswith("single.tif"), "pixel_size_nm"].iloc[0] == 0.05
    assert ok.loc[ok["input"].str.endswith("movie.hspy"), "pixel_size_nm"].iloc[0] == 0.04
    # per-frame CSVs with the frame column and positions of that frame
    f3 = pd.read_csv(out / "movie" / "frame_00003_atoms.csv")
    assert (f3["frame"] == 3).all() and len(f3) == N_ATOMS
    # each frame's median position error, from its atoms' standard errors
    row = ok[ok["input"].str.endswith("movie.hspy") & (ok["frame"] == 3)].iloc[0]
    median = np.median(np.sqrt((f3["y_err"] ** 2 + f3["x_err"] ** 2) / 2))
    assert 0 < row["position_error_px"] < 0.5
    assert row["position_error_px"] == pytest.approx(median, abs=1e-4)
    truth_y = np.sort(np.repeat(np.arange(6) * 14.0 + 12.0, 6) + 0.9)
    np.testing.assert_allclose(np.sort(f3["y"]), truth_y, atol=0.15)
    assert (out / "single_atoms.csv").exists() and (out / "movie" / "provenance.json").exists()
    assert not list(out.rglob("*.part"))
    # the movie's Gaussian model, chosen once when planning, is the one every frame was fitted with
    prov = json.loads((out / "movie" / "provenance.json").read_text())
    assert prov["params"]["gaussian_model"] in ("isotropic", "elliptical")
    assert (f3["model"] == prov["params"]["gaussian_model"]).all()

    # resume: only the missing frame is computed again, with the same result
    before = pd.read_csv(out / "movie" / "frame_00002_atoms.csv")
    (out / "movie" / "frame_00002_atoms.csv").unlink()
    again = run_batch([folder], out, detector="classical", n_workers=0)
    assert again.n_computed == 1 and again.n_skipped == 5
    pd.testing.assert_frame_equal(pd.read_csv(out / "movie" / "frame_00002_atoms.csv"), before)
    s2 = pd.read_csv(out / "summary.csv")
    assert sorted(s2["status"]) == ["error"] + ["ok"] + ["skipped"] * 5
    assert (s2.loc[s2["status"] == "skipped", "n_atoms"] == N_ATOMS).all()


def test_bad_frame_is_reported_and_leaves_no_file(tmp_path):
    stack = np.stack([lattice_frame(0), np.zeros((96, 96), np.float32), lattice_frame(1)])
    write_tiff(tmp_path / "m.tif", stack)
    res = run_batch([tmp_path / "m.tif"], tmp_path / "out", detector="classical", n_workers=0)
    s = res.summary
    assert s["status"].tolist() == ["ok", "error", "ok"]
    assert "constant" in s["error"].iloc[1]
    assert not (tmp_path / "out" / "m" / "frame_00001_atoms.csv").exists()
    assert not list((tmp_path / "out").rglob("*.part"))


def test_plan_chunks_frames_and_cells_outputs(inputs, tmp_path):
    folder, _ = inputs
    plan = plan_batch([folder / "movie.hspy"], tmp_path / "o", task="cells", frames_per_job=2)
    assert [j.frames for j in plan.jobs] == [[0, 1], [2, 3], [4]]
    assert set(plan.jobs[0].outputs[0]) == {"atoms", "cells"}
    with pytest.raises(ValueError, match="task must be"):
        plan_batch([folder], tmp_path / "o", task="everything")
    with pytest.raises(ValueError, match="no such file"):
        plan_batch([tmp_path / "missing.tif"], tmp_path / "o")


def _cli(argv):
    parser = argparse.ArgumentParser(prog="atomnet")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_with_two_local_worker_processes(inputs, tmp_path, capsys):
    folder, _ = inputs
    out = tmp_path / "out"
    movie = str(folder / "movie.hspy")
    code = _cli(
        [
            "batch",
            movie,
            "--out",
            str(out),
            "--workers",
            "2",
            "--model",
            "classical",
            "--task",
            "cells",
            "--frames-per-task",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "5/5 frames" in captured.err  # the progress bar
    assert "5 frames analysed" in captured.out and "2 local workers" in captured.out
    s = pd.read_csv(out / "summary.csv")
    assert (s["status"] == "ok").all() and (s["n_atoms"] == N_ATOMS).all()
    s = s.set_index("frame").sort_index()
    stack = np.asarray(read_image(movie).data)
    for f in range(5):  # the cells CSVs hold what find_cells gives on that frame
        cells = pd.read_csv(out / "movie" / f"frame_{f:05d}_cells.csv")
        lattice, _ = find_cells(stack[f], detector="classical")
        assert len(cells) == len(lattice.cells) == s.loc[f, "n_cells"]
        assert (cells["frame"] == f).all()
    # same numbers as in-process
    ref = run_batch([movie], tmp_path / "ref", detector="classical", n_workers=0)
    for f in range(5):
        a = pd.read_csv(out / "movie" / f"frame_{f:05d}_atoms.csv")
        b = pd.read_csv(tmp_path / "ref" / "movie" / f"frame_{f:05d}_atoms.csv")
        pd.testing.assert_frame_equal(a, b)
    assert ref.n_computed == 5


def test_cli_exit_code_on_failures(inputs, tmp_path, capsys):
    folder, _ = inputs
    code = _cli(
        [
            "batch",
            str(folder / "broken.dm4"),
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "0",
            "--model",
            "classical",
            "--quiet",
        ]
    )
    assert code == 1
    assert "broken.dm4" in capsys.readouterr().err


def test_killed_run_resumes_to_the_same_result(tmp_path):
    import os
    import signal
    import subprocess
    import time

    stack = np.stack([lattice_frame(i, (0.1 * i, 0.05 * i)) for i in range(30)])
    movie = write_hspy(tmp_path / "m.hspy", stack, scale=0.4, units="Å", chunks=(1, 96, 96))
    out = tmp_path / "out"
    code = (
        "import sys; from napari_atomnet.batch import run_batch; "
        f"run_batch([{str(movie)!r}], {str(out)!r}, detector='classical', n_workers=0, "
        "frames_per_job=1)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("m/frame_*_atoms.csv"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = sorted(out.glob("m/frame_*_atoms.csv"))
    assert 3 <= len(written) < 30, "the run should have been killed midway"
    for csv in written:  # every CSV there is complete
        assert len(pd.read_csv(csv)) == N_ATOMS
    resumed = run_batch([movie], out, detector="classical", n_workers=0)
    assert not list(out.rglob("*.part"))  # the killed frame's temporary file is gone
    assert resumed.n_skipped == len(written) and resumed.n_computed == 30 - len(written)
    ref = run_batch([movie], tmp_path / "ref", detector="classical", n_workers=0)
    assert ref.n_computed == 30
    for f in range(30):
        name = f"m/frame_{f:05d}_atoms.csv"
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(tmp_path / "ref" / name))


def test_particles_task_with_the_builtin_segmenter(tmp_path):
    from napari_atomnet.models.segmenter import segment_particles
    from napari_atomnet.synth import haadf_particles

    frames = [haadf_particles((128, 128), n_particles=6, seed=s).image for s in (1, 2)]
    stack = np.stack(frames).astype(np.float32)
    movie = write_hspy(tmp_path / "p.hspy", stack, scale=0.2, units="nm", chunks=(1, 128, 128))
    res = run_batch([movie], tmp_path / "out", task="particles", n_workers=0)
    s = res.summary.set_index("frame")
    assert (s["status"] == "ok").all()
    for f in (0, 1):
        table = pd.read_csv(tmp_path / "out" / "p" / f"frame_{f:05d}_particles.csv")
        ref = segment_particles(stack[f], pixel_size_nm=0.2).table
        assert len(table) == len(ref) == s.loc[f, "n_particles"] > 0
        assert (table["frame"] == f).all()
        assert any(c.endswith("_nm") for c in table.columns)  # sizes in nm: calibrated
    bad = run_batch([movie], tmp_path / "o2", task="particles", detector="classical", n_workers=0)
    assert (bad.summary["status"] == "error").all()
    assert "needs a segmentation model" in bad.summary["error"].iloc[0]


def test_runs_on_a_given_scheduler(inputs, tmp_path):
    from distributed import LocalCluster

    folder, _ = inputs
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        res = run_batch(
            [folder / "movie.hspy"],
            tmp_path / "out",
            detector="classical",
            scheduler=cluster.scheduler_address,
        )
    assert res.n_computed == 5 and (res.summary["n_atoms"] == N_ATOMS).all()


def test_local_cluster_workers_get_the_thread_and_malloc_settings():
    # distributed's own MALLOC_TRIM_THRESHOLD_=65536 made every large numpy temporary an
    # mmap/munmap pair: the workers must see ours, and one thread per library
    from distributed import Client

    from napari_atomnet.batch import SINGLE_THREAD_ENV, WORKER_MALLOC_ENV, local_cluster

    wanted = {**SINGLE_THREAD_ENV, **WORKER_MALLOC_ENV}
    with local_cluster(1) as cluster, Client(cluster) as client:
        seen = client.run(lambda: {k: os.environ.get(k) for k in wanted})
    assert list(seen.values()) == [wanted]
    assert int(WORKER_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]) > 65536
