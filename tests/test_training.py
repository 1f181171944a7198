"""Training: data parallelism (1 vs 4 devices, 2 processes), exact resume after SIGKILL,
checkpoint mismatch, non-finite loss, metrics lines, command-line errors, the configs that quote
brain3d_32's settings."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from train import load_config, parallel, train_classifier, train_simulator
from train.checkpoint import CheckpointMismatchError
from train.cli import main as cli_main
from train.progress import NonFiniteLossError, load_metrics

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "data.n_per_group=16",
    "classifier_optim.steps=8",
    "classifier_optim.batch_size=8",
    "classifier_optim.log_every=4",
    "classifier_optim.checkpoint_every=4",
    "simulator_optim.steps=6",
    "simulator_optim.batch_size=4",
    "simulator_optim.log_every=1",
    "simulator_optim.checkpoint_every=3",
]


def tiny_config(*extra):
    return load_config("synth2d", TINY + list(extra))


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    summary = train_classifier(tiny_config(), workdir)
    return workdir, summary


def _copy_classifier(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src / "classifier", dst / "classifier")
    return dst


def test_classifier_outputs(trained_classifier):
    workdir, summary = trained_classifier
    assert summary["step"] == 8
    assert set(summary["test"]) == {"accuracy", "balanced_accuracy", "n"}
    assert summary["train"]["n"] + summary["test"]["n"] == 32
    lines = load_metrics(workdir / "classifier" / "metrics.jsonl")
    assert [line["step"] for line in lines] == [4, 8]
    assert all(np.isfinite(line["loss"]) and line["examples_per_s"] > 0 for line in lines)
    split = json.loads((workdir / "classifier" / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"])
    assert json.loads((workdir / "classifier" / "summary.json").read_text()) == summary


@pytest.mark.parametrize("condconv", ["experts", "per_example"])  # CPU's and GPU's "auto"
def test_same_loss_curve_on_1_and_4_devices(trained_classifier, tmp_path, condconv):
    src, _ = trained_classifier
    assert jax.device_count() == 4
    config = tiny_config(f"simulator.condconv_implementation={condconv}")
    curves = {}
    for n in (1, 4):
        workdir = _copy_classifier(src, tmp_path / f"d{n}")
        mesh = parallel.make_mesh(jax.devices()[:n])
        train_simulator(config, workdir, mesh=mesh)
        curves[n] = [line["loss"] for line in load_metrics(workdir / "simulator" / "metrics.jsonl")]
    assert len(curves[1]) == 6
    # The batch is split over 4 devices; BatchNorm and the loss see the global batch, so
    # only the order of float reductions differs.
    np.testing.assert_allclose(curves[4], curves[1], rtol=2e-4, atol=2e-5)


def test_batch_must_divide_over_devices(trained_classifier, tmp_path):
    src, _ = trained_classifier
    workdir = _copy_classifier(src, tmp_path)
    with pytest.raises(ValueError, match="does not divide evenly over 4 devices"):
        train_simulator(tiny_config("simulator_optim.batch_size=3"), workdir)


def test_checkpoint_of_another_config_is_a_clear_error(trained_classifier, tmp_path):
    src, _ = trained_classifier
    workdir = _copy_classifier(src, tmp_path)
    with pytest.raises(CheckpointMismatchError, match="classifier.features"):
        train_classifier(tiny_config("classifier.features=(4, 8, 8)"), workdir)
    # The simulator refuses a classifier trained with another architecture too.
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        train_simulator(tiny_config("classifier.hidden=8"), workdir)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(trained_classifier, tmp_path):
    src, _ = trained_classifier
    workdir = _copy_classifier(src, tmp_path)
    config = tiny_config(
        "simulator_optim.learning_rate=1e30",
        "simulator_optim.checkpoint_every=1",
        "simulator.output='image'",  # unbounded (synth2d's gain output saturates instead)
        "objective.image_smoothness='change'",  # an image output has no log gain
    )
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        train_simulator(config, workdir)
    steps = sorted(
        int(p.name) for p in (workdir / "simulator" / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert steps == [1]
    from train.simulator import load_simulator

    _, variables = load_simulator(config, workdir, np.zeros((2, 32, 32, 1), np.float32))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(variables))


RESUME_CONFIG = """
from train.config import load_config

def get_config():
    return load_config("synth2d", {overrides!r})
"""


def test_resume_after_sigkill_matches_uninterrupted_run(trained_classifier, tmp_path):
    src, _ = trained_classifier
    overrides = TINY + ["simulator_optim.steps=16", "simulator_optim.checkpoint_every=2",
                        "simulator_optim.log_every=2"]  # fmt: skip
    config_file = tmp_path / "resume_config.py"
    config_file.write_text(RESUME_CONFIG.format(overrides=overrides))
    reference = _copy_classifier(src, tmp_path / "reference")
    interrupted = _copy_classifier(src, tmp_path / "interrupted")
    command = [sys.executable, "-m", "train.cli", "train-simulator", "--config", str(config_file),
               "--workdir", str(interrupted)]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = interrupted / "simulator" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = (
            [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]
            if checkpoints.exists()
            else []
        )
        if done and max(done) >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = max(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
    assert killed_at < 16

    config = load_config(str(config_file))
    resumed = train_simulator(config, interrupted)
    uninterrupted = train_simulator(config, reference)
    assert resumed["step"] == uninterrupted["step"] == 16
    from train.simulator import load_simulator

    sample = np.zeros((2, 32, 32, 1), np.float32)
    a = load_simulator(config, interrupted, sample)[1]
    b = load_simulator(config, reference, sample)[1]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    # an earlier kept checkpoint, asked for by its step: the same in both runs, not the last
    a14 = load_simulator(config, interrupted, sample, step=14)[1]
    b14 = load_simulator(config, reference, sample, step=14)[1]
    for x, y in zip(jax.tree.leaves(a14), jax.tree.leaves(b14)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(a14)))
    steps = [line["step"] for line in load_metrics(interrupted / "simulator" / "metrics.jsonl")]
    assert steps == list(range(2, 17, 2))  # no duplicated lines from the killed run


DISTRIBUTED = """
import sys
from train import load_config, train_classifier
config = load_config("synth2d", {overrides!r})
summary = train_classifier(config, sys.argv[1])
import jax
print("RESULT", jax.process_count(), jax.device_count(), summary["step"], flush=True)
"""


def test_two_processes_with_jax_distributed(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DISTRIBUTED.format(overrides=TINY[:5]))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        env = dict(
            os.environ,
            JAXINTERP_COORDINATOR=f"localhost:{port}",
            JAXINTERP_NUM_PROCESSES="2",
            JAXINTERP_PROCESS_ID=str(pid),
            XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
        )
        command = [sys.executable, str(script), str(tmp_path / "w")]
        procs.append(
            subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        assert "RESULT 2 4 8" in out  # 2 processes, 4 devices in the mesh, 8 steps
    assert (tmp_path / "w" / "classifier" / "checkpoints" / "8").is_dir()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["train", "--config", "nope", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config 'nope'" in err
    assert (
        cli_main(["train-simulator", "--config", "synth2d", "--workdir", str(tmp_path / "x")]) == 2
    )
    assert "no trained classifier" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "train",
                "--config",
                "synth2d",
                "--workdir",
                str(tmp_path),
                "--set",
                "objective.nope=1",
            ]
        )
        == 2
    )
    assert "unknown config key 'objective.nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["train", "--config", "synth2d", "--workdir", str(tmp_path), "--bogus"])


def test_options_bfloat16_velocity_bce_l1(trained_classifier, tmp_path):
    """The simulator options of the config train: bf16 compute, a velocity field with
    scaling and squaring, BCE instead of the hinge, L1 smoothness and cycle."""
    src, _ = trained_classifier
    workdir = _copy_classifier(src, tmp_path)
    config = tiny_config(
        "dtype='bfloat16'",
        "simulator.output='velocity'",
        "simulator.integration_steps=3",
        "objective.shift_loss='bce'",
        "objective.smoothness_norm='l1'",
        "objective.cycle_norm='l1'",
        "objective.lambda_phi=0.1",
        "simulator_optim.steps=2",
        "simulator.zero_init_output=False",  # a zero field at step 1 has no smoothness cost
    )
    summary = train_simulator(config, workdir)
    lines = load_metrics(workdir / "simulator" / "metrics.jsonl")
    assert summary["step"] == 2 and len(lines) == 2
    assert all(np.isfinite(line["loss"]) and line["smooth"] > 0 for line in lines)


def test_bad_npz_inputs_are_clear_errors(tmp_path, capsys):
    images = np.zeros((4, 8, 8, 1), np.float32)
    images[2, 3, 3, 0] = np.nan
    cases = {
        "nan.npz": ({"images": images, "labels": np.array([0, 1, 0, 1])}, "non-finite .* \\[2\\]"),
        "labels.npz": ({"images": np.zeros((4, 8, 8, 1)), "labels": np.array([0, 1, 2, 1])},
                       "labels must be 0"),
        "count.npz": ({"images": np.zeros((4, 8, 8, 1)), "labels": np.array([0, 1])},
                      "one per image"),
        "shape.npz": ({"images": np.zeros((4, 8, 8)), "labels": np.array([0, 1, 0, 1])},
                      "must be \\(N, \\*spatial, 1\\)"),
    }  # fmt: skip
    from train.config import DataConfig
    from train.datasets import load_dataset

    for name, (arrays, message) in cases.items():
        path = tmp_path / name
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message):
            load_dataset(DataConfig(kind="npz", path=str(path)), seed=0)
    args = ["train-classifier", "--config", "synth2d", "--workdir", str(tmp_path / "w"),
            "--set", "data.kind='npz'", "--set", f"data.path='{tmp_path / 'nan.npz'}'"]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "nan.npz" in err and "non-finite" in err and err.count("\n") == 1


def test_settings_added_after_a_checkpoint_do_not_block_resuming():
    from train.checkpoint import _differences

    saved = {"config": {"objective": {"delta": 5.0}}}
    assert _differences(saved, {"config": {"objective": {"delta": 5.0, "new_field": 0.0}}}) == []
    assert _differences(saved, {"config": {"objective": {"delta": 6.0}}}) == [
        "config.objective.delta: checkpoint 5.0, now 6.0"
    ]
    # How CondConv computes, and the gradient barrier, change speed only: a checkpoint of
    # the old default (experts) restores under "auto", on any backend, and the other way.
    old = {"simulator": {"condconv_implementation": "experts", "field_barrier": False}}
    for now in ("auto", "per_example"):
        new = {"simulator": {"condconv_implementation": now, "field_barrier": True}}
        assert _differences(old, new) == [] and _differences({"config": old}, {"config": new}) == []
    assert _differences({"simulator": {"head_layers": 1}}, {"simulator": {"head_layers": 2}})


def test_brain3d_64_names_brain3d_32s_settings_where_it_quotes_them():
    """brain3d_64's docstring and study64.sh's example variant copy brain3d_32's method as
    ``--set``s; applied to brain3d_64 they give brain3d_32's objective and simulator, all
    but the network's size, so a change to brain3d_32 that is not carried to them fails."""
    import dataclasses
    import re

    import train.configs.brain3d_64 as config64

    doc = " ".join(config64.__doc__.split())
    quoted = doc[doc.index("not yet tried at 64^3:") : doc.index("(`benchmarks/study64.sh")]
    doc_sets = [s.strip("`") for s in re.findall(r"--set\s+(\S+)", quoted)]
    script = (Path(__file__).parents[1] / "benchmarks" / "study64.sh").read_text()
    script_sets = re.search(r'"vol64:\d+:([^"]+)"', script).group(1).split(";")
    assert doc_sets == script_sets and len(doc_sets) == 8
    ours, theirs = load_config("brain3d_64", doc_sets), load_config("brain3d_32")
    assert ours.objective == theirs.objective
    sizes = {"features": theirs.simulator.features, "bottleneck": theirs.simulator.bottleneck}
    assert dataclasses.replace(ours.simulator, **sizes) == theirs.simulator
    assert ours.simulator.features != theirs.simulator.features


def test_cosine_schedule_follows_its_formula_and_pins_the_step_count():
    from train.classifier import make_optimizer, optim_meta
    from train.config import OptimConfig

    optim = OptimConfig(steps=10, learning_rate=0.1, schedule="cosine")
    optimizer = make_optimizer(optim)
    params = np.zeros(1, np.float32)
    state = optimizer.init(params)
    steps = []
    for _ in range(optim.steps):
        # A constant gradient makes every Adam update the learning rate of its step.
        updates, state = optimizer.update(np.ones(1, np.float32), state, params)
        steps.append(-float(updates[0]))
    t = np.arange(optim.steps)
    expected = 0.5 * optim.learning_rate * (1.0 + np.cos(np.pi * t / optim.steps))
    np.testing.assert_allclose(steps, expected, rtol=1e-4)  # float32 Adam
    assert "steps" in optim_meta(optim)  # a cosine run cannot be extended on resume
    assert "steps" not in optim_meta(OptimConfig(steps=10))
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        make_optimizer(OptimConfig(schedule="linear"))


@pytest.mark.parametrize("b2", [0.999, 0.9])
def test_adam_second_moment_decay_follows_adams_formula(b2):
    from train.classifier import make_optimizer
    from train.config import OptimConfig

    optimizer = make_optimizer(OptimConfig(learning_rate=0.1, b2=b2))
    # Large gradients, then small ones: how long Adam remembers the large ones is b2's doing.
    grads = np.array([10.0] * 5 + [0.1] * 20, np.float32)
    params = np.zeros(1, np.float32)
    state = optimizer.init(params)
    got = []
    for g in grads:
        updates, state = optimizer.update(np.array([g], np.float32), state, params)
        got.append(float(updates[0]))
    m = v = 0.0
    expected = []
    for t, g in enumerate(grads.astype(np.float64), start=1):
        m = 0.9 * m + 0.1 * g
        v = b2 * v + (1 - b2) * g * g
        expected.append(-0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # 20 small gradients after the large ones: b2 = 0.9 steps twice as far as 0.999 by then
    # (0.027 against 0.014), having forgotten the large gradients that 0.999 still divides by.
    assert (abs(got[-1]) > 0.02) == (b2 == 0.9)


@pytest.mark.parametrize("clip_norm,decay", [(0.0, 0.0), (1.0, 0.0), (0.0, 0.2)])
def test_sgd_follows_heavy_ball_momentum_after_clipping(clip_norm, decay):
    from train.classifier import make_optimizer
    from train.config import OptimConfig

    optim = OptimConfig(
        learning_rate=0.1, optimizer="sgd", momentum=0.5, clip_norm=clip_norm, weight_decay=decay
    )
    optimizer = make_optimizer(optim)
    grads = np.array([[3.0, 4.0], [0.3, 0.4], [-6.0, 8.0]], np.float32)  # norms 5, 0.5, 10
    params = np.array([1.0, -2.0], np.float32)
    state = optimizer.init(params)
    velocity = np.zeros(2)
    for g in grads:
        updates, state = optimizer.update(g, state, params)
        norm = np.linalg.norm(g)
        clipped = g * min(1.0, clip_norm / norm) if clip_norm else g
        velocity = 0.5 * velocity + clipped + decay * params
        np.testing.assert_allclose(np.asarray(updates), -0.1 * velocity, rtol=1e-5)
        params = params + np.asarray(updates)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(OptimConfig(optimizer="rmsprop"))


def test_a_cosine_run_refuses_to_resume_with_more_steps(trained_classifier, tmp_path):
    src, _ = trained_classifier
    workdir = _copy_classifier(src, tmp_path)
    train_simulator(tiny_config("simulator_optim.schedule='cosine'"), workdir)
    more = tiny_config("simulator_optim.schedule='cosine'", "simulator_optim.steps=9")
    with pytest.raises(CheckpointMismatchError, match="steps"):
        train_simulator(more, workdir)


def test_change_objective_resumes_under_the_new_objective(trained_classifier, tmp_path, capsys):
    """A schedule: 3 steps at cycle weight 1, then 3 at 2. Without ``change_objective``
    the checkpoint is refused; with it (``train-simulator --change-objective``) the run goes
    on from step 3 (its parameters and Adam state, not a restart) under the new weight, and
    the final checkpoint records it. Settings outside ``objective`` stay refused."""
    import shutil

    from train.simulator import load_simulator

    src, _ = trained_classifier
    first = _copy_classifier(src, tmp_path / "schedule")
    assert tiny_config().objective.cycle_weight == 1.0
    train_simulator(tiny_config("simulator_optim.steps=3"), first)
    shutil.copytree(first, tmp_path / "same")
    doubled = tiny_config("objective.cycle_weight=2.0")
    with pytest.raises(CheckpointMismatchError, match="cycle_weight: checkpoint 1.0, now 2.0"):
        train_simulator(doubled, first)
    with pytest.raises(CheckpointMismatchError, match="simulator.features"):
        train_simulator(tiny_config("simulator.features=(4, 8)"), first, change_objective=True)
    sets = [a for s in TINY + ["objective.cycle_weight=2.0"] for a in ("--set", s)]
    command = ["train-simulator", "--config", "synth2d", "--workdir", str(first)]
    assert cli_main(command + sets + ["--change-objective"]) == 0
    assert "resuming step 3 with objective.cycle_weight" in capsys.readouterr().err
    train_simulator(tiny_config(), tmp_path / "same")
    scheduled = load_metrics(first / "simulator" / "metrics.jsonl")
    plain = load_metrics(tmp_path / "same" / "simulator" / "metrics.jsonl")
    assert [line["step"] for line in scheduled] == [1, 2, 3, 4, 5, 6]
    assert scheduled[:3] == plain[:3]
    # Step 4 starts from the same state and batch in both runs: the same forward pass, so
    # the cycle term is twice the plain run's and the rest of the loss the same; from the
    # step after, the parameters differ.
    now, then = scheduled[3], plain[3]
    np.testing.assert_allclose(now["cycle"], 2 * then["cycle"], rtol=1e-5)
    np.testing.assert_allclose(now["loss"] - now["cycle"], then["loss"] - then["cycle"], rtol=1e-5)
    assert now["cycle"] > 0 and scheduled[4]["shift_inject"] != plain[4]["shift_inject"]
    sample = np.zeros((2, 32, 32, 1), np.float32)
    load_simulator(doubled, first, sample)
    with pytest.raises(CheckpointMismatchError, match="--change-objective"):
        load_simulator(tiny_config(), first, sample)


def test_simulator_seed_gives_another_simulator_of_the_same_data(trained_classifier, tmp_path):
    """``simulator_seed`` changes the simulator's initialisation and batches, nothing else:
    equal to ``seed`` it is the default run (folder ``simulator``); another value trains
    another simulator against the same classifier, in ``simulator_seed{N}`` beside it, and
    a checkpoint of one refuses to resume as the other."""
    src, _ = trained_classifier
    losses = {}
    runs = (("default", (), "simulator"), ("same", ("simulator_seed=0",), "simulator"),
            ("other", ("simulator_seed=7",), "simulator_seed7"))  # fmt: skip
    for name, extra, folder in runs:
        workdir = _copy_classifier(src, tmp_path / name)
        train_simulator(tiny_config(*extra), workdir)
        assert sorted(p.name for p in workdir.iterdir()) == ["classifier", folder]
        lines = load_metrics(workdir / folder / "metrics.jsonl")
        losses[name] = np.array([line["loss"] for line in lines])
    assert tiny_config().seed == 0
    np.testing.assert_array_equal(losses["same"], losses["default"])
    assert not np.allclose(losses["other"], losses["default"], rtol=1e-3)
    with pytest.raises(CheckpointMismatchError, match="simulator_seed: checkpoint 7, now 8"):
        train_simulator(tiny_config("simulator_seed=8"), tmp_path / "other", name="simulator_seed7")


def test_population_map_trains_by_its_own_sgd_and_restores(trained_classifier, tmp_path):
    """With ``simulator.population_map`` the network keeps Adam and the map gets SGD with
    momentum at ``population_learning_rate`` (heavy ball: ``m = 0.9 m + g``, step ``-r m``);
    a trained run's map moves off zero and its checkpoint restores it."""
    from train.config import OptimConfig
    from train.simulator import load_simulator, simulator_optimizer

    config = tiny_config("simulator.population_map=True",
                         "simulator_optim.population_learning_rate=0.3",
                         "simulator_optim.learning_rate=0.01")  # fmt: skip
    optimizer = simulator_optimizer(config)
    params = {"net": {"w": np.zeros(3, np.float32)}, "population_map": np.zeros(2, np.float32)}
    grads = {"net": {"w": np.array([2.0, -1.0, 0.5], np.float32)},
             "population_map": np.array([2.0, -1.0], np.float32)}  # fmt: skip
    state = optimizer.init(params)
    momentum = np.zeros(2)
    for _ in range(3):
        updates, state = optimizer.update(grads, state, params)
        momentum = 0.9 * momentum + grads["population_map"]
        np.testing.assert_allclose(updates["population_map"], -0.3 * momentum, rtol=1e-6)
        # Adam on a constant gradient: every step is the rate, against the gradient's sign
        np.testing.assert_allclose(updates["net"]["w"], -0.01 * np.sign(grads["net"]["w"]),
                                   rtol=1e-4)  # fmt: skip
    assert OptimConfig().population_learning_rate == 0.05

    src, _ = trained_classifier
    workdir = _copy_classifier(src, tmp_path)
    train_simulator(config, workdir)
    sample = np.zeros((2, 32, 32, 1), np.float32)
    _, variables = load_simulator(config, workdir, sample)
    maps = np.asarray(variables["params"]["population_map"])
    assert maps.shape == (2, 32, 32, 1) and np.abs(maps).max() > 0
