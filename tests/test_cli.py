"""End to end: train.py on each family with a tiny backbone, then evaluate.py; CLI errors."""

import json
import math
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
import yaml

import evaluate
import train
from checkpoint import save_checkpoint
from config import config_from_args
from hardware import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--backbone",
    "nature_cnn",
    "--no-pretrained",
    "--no-freeze-backbone",
    "--head-hidden",
    "32",
    "--num-steps",
    "32",
    "--num-minibatches",
    "2",
    "--update-epochs",
    "2",
    "--eval-episodes",
    "2",
    "--eval-envs",
    "2",
    "--wandb-mode",
    "offline",
    "--progress-interval",
    "0.1",
]
FAMILIES = {
    "crafter": ["--env", "crafter", "--num-envs", "4", "--steps", "2048", "--eval-interval", "1024",
                "--history-length", "4"],
    "procgen": ["--env", "procgen/bigfish", "--num-envs", "8", "--steps", "3072", "--eval-interval", "1536",
                "--history-length", "2"],
    "atari": ["--env", "atari/Breakout", "--num-envs", "4", "--steps", "2048", "--eval-interval", "1024",
              "--history-length", "4"],
}  # fmt: skip
# every family trains a recurrent policy here: evaluate.py must carry its state through whole episodes
RECURRENT = {"crafter": "gru", "procgen": "lstm", "atari": "gru"}


def run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained_run(request, tmp_path_factory):
    logdir = tmp_path_factory.mktemp(request.param) / "run_1"
    recurrent = ["--recurrent", RECURRENT[request.param], "--recurrent-size", "32"]
    args = [*TINY, *FAMILIES[request.param], *recurrent, "--logdir", str(logdir)]
    if request.param == "atari":
        args += ["--eval-episodes", "1", "--eval-envs", "1"]  # full games (all lives) are long
    proc = run("train.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return request.param, logdir, proc


def test_training_writes_every_output(trained_run):
    family, logdir, proc = trained_run
    for name in (
        "learning_curve.png",
        "best_model.pth",
        "last.pth",
        "eval_stats.pkl",
        "eval_stats.json",
        "metrics.jsonl",
        "config.yaml",
        "summary.json",
    ):
        assert (logdir / name).is_file(), name
    assert len(list((logdir / "videos").glob("eval_*.mp4"))) == 2  # one per evaluation
    wandb_runs = list((logdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert wandb_runs, "no offline wandb run"
    assert list(wandb_runs[0].parent.glob("files/media/videos/eval/*.mp4")), "no eval video in the wandb run"
    records = wandb_runs[0].read_bytes()
    for key in (b"eval/mean_return", b"losses/approx_kl", b"perf/sps", b"charts/learning_rate"):
        assert key in records, key
    with open(logdir / "eval_stats.pkl", "rb") as f:
        stats = pickle.load(f)
    assert len(stats["step"]) == 2 and len(stats["returns"][0]) >= 1
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    for key in (
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "losses/approx_kl",
        "losses/clipfrac",
        "losses/explained_variance",
        "losses/grad_norm",
        "charts/learning_rate",
        "perf/sps",
        "eval/mean_return",
    ):
        assert key in keys, key
    if family == "crafter":
        assert "crafter/score" in keys and "crafter/success_collect_wood" in keys
        evals = json.loads((logdir / "eval_stats.json").read_text())  # best_model.pth: the best Crafter score
        best = torch.load(logdir / "best_model.pth", weights_only=True)
        assert best["eval_score"] == max(evals["crafter_score"]) and best["best_eval_score"] == best["eval_score"]
    config = yaml.safe_load((logdir / "config.yaml").read_text())
    assert "wandb_key" not in config and "logdir" not in config and config["env"] == FAMILIES[family][1]
    assert "step" in proc.stdout and "sps" in proc.stdout and "Traceback" not in proc.stderr
    # the precision auto chose on this machine, wherever a run is read back
    used = resolve_precision("auto", torch.device("cpu"))
    assert config["precision"] == "auto" and f"# precision {used} (auto" in (logdir / "config.yaml").read_text()
    start = next(line for line in proc.stdout.splitlines() if line.startswith("pixelppo:"))
    assert f"precision {used} (auto" in start
    assert json.loads((logdir / "summary.json").read_text())["precision_used"] == used
    assert torch.load(logdir / "last.pth", weights_only=True)["precision_used"] == used
    assert b'precision_used\x82\x01\x06"' + used.encode() in records  # wandb's config record


def test_training_speed_leaves_evaluations_out_and_evaluations_show_their_own(trained_run):
    """A quick try spent most of its time evaluating and reported it as training ("done: 512 steps at 3 sps"): the
    steps/s are now the training's, and each evaluation shows its progress and how long it took."""
    family, logdir, proc = trained_run
    summary = json.loads((logdir / "summary.json").read_text())
    evaluating = summary["time_split_seconds"]["evaluation"]
    assert evaluating > 0
    assert summary["sps"] == pytest.approx(summary["global_step"] / (summary["seconds"] - evaluating), rel=0.01)
    assert "evaluations took" in proc.stdout and "training steps/s" in proc.stdout
    assert re.search(r"\| evaluating: \d/\d episodes \|", proc.stdout)  # its progress, episode by episode
    assert "episodes in 0:" in proc.stdout  # each evaluation's line gives its time
    (stretch,) = summary["stretches"]
    assert (stretch["from_step"], stretch["to_step"]) == (0, summary["global_step"])
    assert stretch["precision"] == summary["precision_used"] and stretch["device"]


def test_evaluate_rebuilds_from_the_checkpoint_alone(trained_run, tmp_path):
    family, logdir, _ = trained_run
    out = tmp_path / "eval"
    # argmax play of an untrained Breakout policy can wait forever for FIRE after a lost life: sample there
    deterministic = [] if family == "atari" else ["--deterministic"]
    proc = run(
        "evaluate.py", str(logdir / "best_model.pth"), str(logdir / "last.pth"), "--episodes", "2", "--num-envs",
        "2", *deterministic, "--record", "--analyze-value", "--video-frames", "50", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    sets = ["train", "test"] if family == "procgen" else ["eval"]
    assert [r["set"] for r in rows] == sets * 2  # both checkpoints, every level set
    for row in rows:
        assert row["episodes"] == 2 and len(row["returns"]) == 2
        assert iio.imread(row["video"], plugin="pyav").shape[0] <= 50
        assert Path(row["value_plot"]).read_bytes()[:4] == b"\x89PNG"
        assert -1e9 < row["value_explained_variance"] <= 1.0 or math.isnan(row["value_explained_variance"])
    with open(out / "eval_stats.pkl", "rb") as f:
        stats = pickle.load(f)
    assert len(stats["mean_return"]) == len(rows)
    with open(logdir / "eval_stats.pkl", "rb") as f:
        training_stats = pickle.load(f)
    assert set(training_stats) == set(stats)  # one schema for training's and evaluate.py's evaluations
    if family == "crafter":
        assert len(rows[0]["success_rates"]) == 22 and rows[0]["crafter_score"] >= 0
        assert "collect_wood" in proc.stdout
    if family == "procgen":
        assert rows[0]["levels"] == [0, 200] and rows[1]["levels"] == [0, 0]  # test: the full distribution
        assert "normalized_return" in rows[0] and "generalization gap" in proc.stdout
    if family == "atari":
        assert rows[0]["human_normalized"] is not None


# evaluate.py's outputs, each alone: flags -> the files it writes, run in a folder holding run_1/last.pth
FRESH_OUTPUTS = {
    "results": ([], ["run_1/evaluation/results.json", "run_1/evaluation/eval_stats.json"]),
    "video": (["--record", "--video-frames", "20"], ["run_1/evaluation/run_1_last_eval.mp4"]),
    "value plot": (["--analyze-value"], ["run_1/evaluation/run_1_last_eval_value.png"]),
    "json": (["--json", "reports/run_1.json"], ["reports/run_1.json"]),
}


@pytest.mark.parametrize("trained_run", ["crafter"], indirect=True)
@pytest.mark.parametrize("output", sorted(FRESH_OUTPUTS))
def test_each_evaluate_output_makes_its_folder(trained_run, output, tmp_path, monkeypatch):
    """A run never evaluated before has no evaluation/ folder: every output, alone, must make its own."""
    _, logdir, _ = trained_run
    (tmp_path / "run_1").mkdir()
    shutil.copy(logdir / "last.pth", tmp_path / "run_1" / "last.pth")
    monkeypatch.chdir(tmp_path)
    flags, files = FRESH_OUTPUTS[output]
    assert evaluate.main(["run_1/last.pth", "--episodes", "1", "--num-envs", "1", *flags]) == 0
    for name in files:
        assert (tmp_path / name).stat().st_size > 0, name
    (row,) = json.loads(Path("run_1/evaluation/results.json").read_text())
    if output == "value plot":
        assert Path(row["value_plot"]).read_bytes()[:4] == b"\x89PNG" and "value_explained_variance" in row


@pytest.mark.parametrize("trained_run", ["crafter"], indirect=True)
def test_a_crafter_run_shows_its_crafter_scores(trained_run):
    """learning_curve.png opens with the Crafter score, achievements.png has the last evaluation's success rates
    (both also in wandb, at each evaluation), and summary.json tells the published training score from the
    evaluation scores."""
    _, logdir, _ = trained_run
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    evals = json.loads((logdir / "eval_stats.json").read_text())
    summary = json.loads((logdir / "summary.json").read_text())
    train_scores = [r["crafter/score"] for r in rows if "crafter/score" in r]  # all training episodes so far
    assert summary["train_crafter_score"] == train_scores[-1] and len(summary["train_success_rates"]) == 22
    assert summary["best_eval_crafter_score"] == max(evals["crafter_score"]) == summary["best_eval_score"]
    assert summary["last_eval_crafter_score"] == evals["crafter_score"][-1] == summary["last_eval_score"]
    assert summary["last_eval_success_rates"] == evals["success_rates"][-1]
    assert (summary["last_eval_step"], summary["last_eval_episodes"]) == (evals["step"][-1], evals["episodes"][-1])
    assert not any(key.startswith("crafter/") for key in summary)  # the unlabelled keys are gone
    assert iio.imread(logdir / "learning_curve.png").shape[:2] == (450, 1400)  # Crafter score beside the return
    assert iio.imread(logdir / "achievements.png").shape[:2] == (500, 1200)
    media = next((logdir / "wandb").glob("offline-run-*/files/media/images/figures"))
    for figure in ("learning_curve", "achievements"):
        assert len(list(media.glob(f"{figure}_*.png"))) == len(evals["step"]), figure


def test_default_run_is_the_crafter_cpu_recipe_on_a_cpu(monkeypatch):
    """`python train.py` on a CPU trains the best Crafter recipe measured at 1M that a CPU finishes in minutes
    (bench/results/crafter-1024k.json); on a GPU, crafter-moon (tests/test_presets.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    default = config_from_args([])
    assert default == config_from_args(["--preset", "crafter-cpu"]) and default.preset == "crafter-cpu"
    assert (default.env, default.backbone, default.freeze_backbone, default.seed) == (
        "crafter",
        "nature_cnn",
        False,
        42,
    )


def test_effnetv2s_frozen_preset_is_the_seed_design():
    """The project's first default: frozen pretrained EfficientNetV2-S, 3-layer heads, 64 envs, 4 frames."""
    cfg = config_from_args(["--preset", "effnetv2s-frozen"])
    assert (
        cfg.env,
        cfg.steps,
        cfg.eval_interval,
        cfg.eval_episodes,
        cfg.num_envs,
        cfg.history_length,
        cfg.lr,
        cfg.seed,
        cfg.head_hidden,
    ) == ("crafter", 1_000_000, 100_000, 20, 64, 4, 3e-4, 42, 256)
    assert cfg.backbone.startswith("tf_efficientnetv2_s") and cfg.freeze_backbone and cfg.pretrained
    assert (cfg.gamma, cfg.gae_lambda, cfg.adv_norm, cfg.clip_vloss, cfg.value_norm) == (
        0.99,
        0.95,
        "minibatch",
        True,
        False,
    )


def test_presets_and_flags_layer_in_order():
    cfg = config_from_args(["--preset", "atari-cleanrl", "--env", "atari/Pong", "--lr", "1e-4"])
    assert (cfg.env, cfg.lr, cfg.clip_coef, cfg.backbone) == ("atari/Pong", 1e-4, 0.1, "nature_cnn")


BAD_TRAIN_ARGS = {
    "unknown game": ["--env", "procgen/notagame"],
    "unknown family": ["--env", "doom/E1M1"],
    "unknown backbone": ["--backbone", "not_a_timm_model"],
    "minibatches": ["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"],
    "zero envs": ["--num-envs", "0"],
    "preset family": ["--preset", "procgen-official", "--env", "crafter"],
    "missing weights": ["--pretrained-file", "/nonexistent/weights.pth"],
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_ARGS))
def test_bad_train_input_gives_one_line_and_exit_2(case, tmp_path, capsys):
    assert train.main([*BAD_TRAIN_ARGS[case], "--logdir", str(tmp_path / "run_1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error:") and "\n" not in err


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    logdir = tmp_path / "run_1"
    logdir.mkdir()
    (logdir / "last.pth").write_bytes(b"precious")
    assert train.main(["--logdir", str(logdir)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (logdir / "last.pth").read_bytes() == b"precious"


def test_bad_checkpoints_give_one_line_and_exit_2(tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00" * 64)
    spec = {
        "backbone": "nature_cnn",
        "obs_shape": [4, 84, 84],
        "frame_channels": 1,
        "num_actions": 6,
        "head_hidden": 32,
        "freeze_backbone": False,
    }
    save_checkpoint(
        tmp_path / "mismatch.pth",
        {"config": {"env": "atari/Pong"}, "policy_spec": spec, "model": {"nonsense": torch.ones(1)}, "global_step": 0},
    )
    for name in ("missing.pth", "foreign.pth", "garbage.pth", "mismatch.pth"):
        assert evaluate.main([str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("evaluate.py: error:") and "\n" not in err, err


def test_cli_error_from_a_real_process_has_no_traceback(tmp_path):
    proc = run("train.py", "--env", "atari/NoSuchGame", "--logdir", str(tmp_path / "run_1"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_bf16_and_compile_train_and_save_plain_checkpoints(tmp_path):
    """--precision bf16 (autocast) and --compile (torch.compile) run the whole loop; the checkpoint loads into
    an uncompiled float32 policy whose outputs are close to the bf16 ones."""
    logdir = tmp_path / "run_1"
    args = [*TINY, "--env", "procgen/coinrun", "--num-envs", "4", "--steps", "256", "--eval-interval", "256"]
    summary = train.train(config_from_args([*args, "--precision", "bf16", "--compile", "--logdir", str(logdir)]))
    assert summary["finished"] and math.isfinite(summary["last_eval_score"])
    payload = torch.load(logdir / "last.pth", weights_only=True)
    assert not any("_orig_mod" in key for key in payload["model"])
    policy = evaluate.load_policy(payload, torch.device("cpu"))
    obs = torch.randint(0, 255, (8, *policy.spec.obs_shape), dtype=torch.uint8)
    logits, value = policy(obs)
    policy.precision = "bf16"
    logits_bf16, value_bf16 = policy(obs)
    assert logits_bf16.dtype == torch.float32
    torch.testing.assert_close(logits_bf16, logits, atol=0.05, rtol=0.05)
    torch.testing.assert_close(value_bf16, value, atol=0.05, rtol=0.05)


def test_wandb_environment_variables_reach_the_wandb_run(tmp_path, monkeypatch):
    """WANDB_MODE=disabled starts no wandb run; WANDB_RUN_GROUP and WANDB_TAGS name the run's group and tags."""
    tiny = [*TINY, "--env", "procgen/bigfish", "--num-envs", "2", "--steps", "64", "--eval-interval", "64",
            "--no-eval-video", "--eval-episodes", "1"]  # fmt: skip
    no_wandb_flag = [a for a in tiny if a not in ("--wandb-mode", "offline")]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    off = run("train.py", *no_wandb_flag, "--logdir", str(tmp_path / "run_1"))
    assert off.returncode == 0, off.stderr[-2000:]
    assert not (tmp_path / "run_1" / "wandb").exists()
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-7")
    monkeypatch.setenv("WANDB_TAGS", "width-half,screen")
    on = run("train.py", *tiny, "--logdir", str(tmp_path / "run_2"))  # the flag wins over WANDB_MODE
    assert on.returncode == 0, on.stderr[-2000:]
    records = next((tmp_path / "run_2" / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    assert b"sweep-7" in records and b"width-half" in records and b"screen" in records
