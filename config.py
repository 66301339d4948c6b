"""Run configuration: the one dataclass of every setting, its flags, YAML run files and presets, resume rules.

A run is resolved from, lowest first: `Config`'s defaults, `--preset NAME` (configs/NAME.yaml), `--config FILE`,
then the flags given. A run given neither --preset nor --config starts from its game family's published recipe
(`default_preset`; for Crafter the machine picks it). Every run writes the result as `config.yaml` in its logdir, so
`python train.py --config logs/run_1/config.yaml --logdir logs/run_2` repeats it. This module does not import torch
(hardware.py answers the questions that need it), so `--help` and a mistyped flag are answered at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from env import parse_env_id
from env_procgen import PROCGEN_MODES
from errors import UsageError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PRECISIONS = ("auto", "bf16", "fp32")
# the preset a run given neither --preset nor --config starts from, per family (Crafter's: `default_preset`)
RECIPES = {"atari": "atari-cleanrl", "procgen": "procgen-official"}
# augment.AUGMENTATIONS and policy.py's own timm models, written out: those modules import torch (tests check them)
AUGMENTATIONS = ("none", "crop", "random_conv", "grayscale", "flip", "rotate", "cutout", "cutout_color", "color_jitter",
                 "ucb")  # fmt: skip
PIXEL_BACKBONES = ("nature_cnn", "impala_cnn", "impala_cnn_moon", "impala_cnn_moon_half")
# the flags' groups in --help, with what each holds
GROUPS = {
    "run": "what to train, from which settings, where (flags win over --config's file, which wins over --preset's)",
    "game": "the game and its envs",
    "network": "the policy: backbone, trunk, heads, recurrent core",
    "PPO": "the update and its rewards",
    "evaluation and checkpoints": "evaluations between updates (best_model.pth keeps the best), last.pth",
    "logging": "progress lines, metrics.jsonl, TensorBoard, wandb",
    "hardware": "device, arithmetic, compilation, torchrun",
}


def arg(
    default,
    help: str,
    *,
    group: str,
    metavar: str | None = None,
    choices: tuple | None = None,
    check: tuple | None = None,
    resume: bool = False,
    invocation: bool = False,
    secret: bool = False,
):
    """A Config field and its rules: its command-line `group` (in GROUPS), help, `metavar` (default: by type) and
    `choices`; `check`, a (predicate, what is allowed) pair that `validate` applies; `resume`: a resumed run may
    change it (otherwise it is the run's own); `invocation`: what one invocation does rather than what the run is
    (never written to config.yaml); `secret`: never written anywhere (checkpoints, wandb, run files)."""
    rules = {"choices": choices, "check": check, "resume": resume, "invocation": invocation, "secret": secret}
    return field(default=default, metadata={"help": help, "group": group, "metavar": metavar, **rules})


# `check` rules: (is the value allowed, what is allowed)
AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
NON_NEGATIVE = (lambda v: v >= 0, "0 or more")
AT_LEAST_MINUS_1 = (lambda v: v >= -1, "-1 or more")
POSITIVE = (lambda v: v > 0, "positive")
POSITIVE_OR_NONE = (lambda v: v is None or v > 0, "positive or none")
DISCOUNT = (lambda v: 0 < v <= 1, "in (0, 1]")
DISCOUNT_OR_NONE = (lambda v: v is None or 0 < v <= 1, "in (0, 1] or none")
UNIT_INTERVAL = (lambda v: 0 <= v <= 1, "in [0, 1]")
PROBABILITY = (lambda v: 0 <= v <= 1, "a probability in [0, 1]")


def preset_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))


@dataclass
class Config:
    # run
    config: str = arg(
        "",
        "YAML run file to start from, e.g. a run's config.yaml (flags given on the command line still win)",
        group="run",
        metavar="PATH",
        invocation=True,
    )
    preset: str = arg(
        "",
        "published recipe to start from, configs/<NAME>.yaml (default without --config: the game's own, crafter-moon "
        "on a GPU or else crafter-cpu; procgen-official; atari-cleanrl)",
        group="run",
        choices=preset_names(),
    )
    logdir: str = arg(
        "", "run folder (default: the next free logs/run_<N>)", group="run", metavar="PATH", invocation=True
    )
    overwrite: bool = arg(False, "replace an existing run in --logdir", group="run", resume=True, invocation=True)
    steps: int = arg(
        1_024_000,
        "total environment steps (agent steps summed over envs); a larger one given with --resume trains a run on",
        group="run",
        check=AT_LEAST_1,
        resume=True,
    )
    seed: int = arg(42, "random seed", group="run")
    resume: str = arg(
        "",
        "continue the run in this logdir (its last.pth) or from this checkpoint",
        group="run",
        metavar="PATH",
        resume=True,
        invocation=True,
    )
    stop_after: int = arg(
        0,
        "stop cleanly once this many steps are done, to go on later with --resume (0: never)",
        group="run",
        check=NON_NEGATIVE,
        resume=True,
        invocation=True,
    )
    # game
    env: str = arg(
        "crafter",
        "crafter, procgen/<game> or atari/<Game> (or a gymnasium id like ALE/Pong-v5)",
        group="game",
        metavar="GAME",
    )
    num_envs: int = arg(8, "parallel training envs", group="game", check=AT_LEAST_1)
    history_length: int = arg(1, "frames stacked into one observation", group="game", check=AT_LEAST_1)
    distribution_mode: str = arg("easy", "Procgen distribution mode", group="game", choices=PROCGEN_MODES)
    start_level: int = arg(0, "Procgen: first training level", group="game", check=NON_NEGATIVE)
    num_levels: int = arg(
        200,
        "Procgen: training levels (0: unlimited); evaluation in training: the 1000 after them",
        group="game",
        check=NON_NEGATIVE,
    )
    episodic_life: bool = arg(True, "Atari: a lost life ends the training episode (never in evaluation)", group="game")
    sticky_actions: float = arg(
        0.0, "Atari: repeat-action probability (0.25 is the v5 protocol)", group="game", check=PROBABILITY
    )
    max_env_crashes: int = arg(
        3,
        "restart crashed env workers up to this many times, then stop the run",
        group="game",
        check=NON_NEGATIVE,
        resume=True,
    )
    # network
    backbone: str = arg(
        "nature_cnn",
        f"{', '.join(PIXEL_BACKBONES)} (pixelppo's own pixel CNNs) or any timm model",
        group="network",
        metavar="NAME",
    )
    pretrained: bool = arg(False, "load the backbone's pretrained weights when they can be had", group="network")
    pretrained_file: str = arg(
        "", "load backbone weights from this local file instead of the hub", group="network", metavar="PATH"
    )
    freeze_backbone: bool = arg(False, "keep backbone weights fixed; train only the heads", group="network")
    image_size: int = arg(
        0,
        "resize frames to N x N before the backbone (0: native size; ImageNet nets like ~224)",
        group="network",
        check=NON_NEGATIVE,
    )
    feature_level: int = arg(
        -1,
        "features: the backbone's flattened map at this level (0: stride 2, 1: stride 4, ...), as PIE-G; -1: pooled",
        group="network",
        check=AT_LEAST_MINUS_1,
    )
    feature_norm: bool = arg(True, "LayerNorm on the backbone features, so the heads see unit scale", group="network")
    trunk_hidden: int = arg(
        1024,
        "a shared dense layer (ReLU) of this width before the heads (0: none)",
        group="network",
        check=NON_NEGATIVE,
    )
    head_hidden: int = arg(
        0, "width of the 3-layer policy and value heads (0: one linear layer each)", group="network", check=NON_NEGATIVE
    )
    value_norm: bool = arg(
        True, "the value head predicts normalized returns (EWMA statistics of the targets)", group="network"
    )
    recurrent: str = arg(
        "none", "recurrent core between the trunk and the heads", group="network", choices=("none", "gru", "lstm")
    )
    recurrent_size: int = arg(256, "units of the recurrent core", group="network", check=AT_LEAST_1)
    # PPO
    lr: float = arg(3e-4, "Adam learning rate", group="PPO", check=POSITIVE)
    lr_schedule: str = arg("constant", "learning-rate schedule", group="PPO", choices=("constant", "linear", "cosine"))
    adam_eps: float = arg(
        1e-8,
        "Adam epsilon (CleanRL and openai/baselines: 1e-5; PyTorch's default: 1e-8)",
        group="PPO",
        check=POSITIVE,
    )
    num_steps: int = arg(512, "rollout length per env per update", group="PPO", check=AT_LEAST_1)
    update_epochs: int = arg(3, "PPO epochs per rollout", group="PPO", check=AT_LEAST_1)
    num_minibatches: int = arg(8, "minibatches per epoch", group="PPO", check=AT_LEAST_1)
    gamma: float = arg(0.95, "discount factor", group="PPO", check=DISCOUNT)
    gae_lambda: float = arg(0.65, "GAE lambda", group="PPO", check=UNIT_INTERVAL)
    clip_coef: float = arg(0.2, "PPO ratio clip (also the value clip)", group="PPO", check=POSITIVE)
    clip_vloss: bool = arg(False, "clip the value loss around the rollout values", group="PPO")
    ent_coef: float = arg(0.01, "entropy bonus coefficient", group="PPO", check=NON_NEGATIVE)
    vf_coef: float = arg(1.0, "value loss coefficient", group="PPO", check=NON_NEGATIVE)
    max_grad_norm: float = arg(0.5, "global gradient norm clip", group="PPO", check=POSITIVE)
    target_kl: float | None = arg(
        None,
        "stop the epochs early when approx KL exceeds this (none: never)",
        group="PPO",
        check=POSITIVE_OR_NONE,
    )
    adv_norm: str = arg(
        "batch",
        "normalize advantages per minibatch, over the whole batch, or not",
        group="PPO",
        choices=("minibatch", "batch", "none"),
    )
    reward_scaling: str = arg(
        "auto",
        "training rewards: auto (Atari sign, Procgen normalize, Crafter none)",
        group="PPO",
        choices=("auto", "none", "sign", "normalize"),
    )
    reward_norm_gamma: float | None = arg(
        None,
        "discount of the return whose std normalizes rewards (none: --gamma)",
        group="PPO",
        check=DISCOUNT_OR_NONE,
    )
    augment: str = arg(
        "none",
        "DrAC: regularize the policy and value on augmented frames (the PPO loss stays clean); ucb: UCB-DrAC's "
        "bandit picks the transform of each update",
        group="PPO",
        choices=AUGMENTATIONS,
    )
    drac_coef: float = arg(
        0.1, "weight of DrAC's two regularizers (the paper's alpha_r)", group="PPO", check=NON_NEGATIVE
    )
    max_bad_updates: int = arg(
        3,
        "stop after this many consecutive updates whose every minibatch was non-finite",
        group="PPO",
        check=AT_LEAST_1,
        resume=True,
    )
    # evaluation and checkpoints
    eval_interval: int = arg(
        102_400, "evaluate every this many steps (and at the end)", group="evaluation and checkpoints", check=AT_LEAST_1
    )
    eval_episodes: int = arg(20, "episodes per evaluation", group="evaluation and checkpoints", check=AT_LEAST_1)
    eval_envs: int = arg(8, "parallel evaluation envs", group="evaluation and checkpoints", check=AT_LEAST_1)
    eval_video: bool = arg(
        True,
        "record one evaluation episode as a video (logdir/videos and wandb)",
        group="evaluation and checkpoints",
        resume=True,
    )
    video_every: int = arg(
        1,
        "record the video at every this many-th evaluation",
        group="evaluation and checkpoints",
        check=AT_LEAST_1,
        resume=True,
    )
    video_frames: int = arg(
        500, "longest evaluation video in frames", group="evaluation and checkpoints", check=AT_LEAST_1, resume=True
    )
    save_interval: float = arg(
        10.0,
        "also save last.pth every this many minutes",
        group="evaluation and checkpoints",
        metavar="MINUTES",
        check=POSITIVE,
        resume=True,
    )
    # logging
    progress_interval: float = arg(
        30.0,
        "seconds between progress lines when not on a terminal",
        group="logging",
        metavar="SECONDS",
        check=POSITIVE,
        resume=True,
    )
    tensorboard: bool = arg(False, "also write TensorBoard event files to logdir/tensorboard", group="logging")
    wandb_mode: str = arg(
        "auto",
        "auto: online with a key or login, else offline in the logdir",
        group="logging",
        choices=("auto", "online", "offline", "disabled"),
        resume=True,
    )
    wandb_project: str = arg("pixelppo", "wandb project", group="logging", metavar="NAME", resume=True)
    wandb_entity: str = arg("", "wandb entity (team or user)", group="logging", metavar="NAME", resume=True)
    wandb_key: str = arg(
        "",
        "wandb API key (never written to disk)",
        group="logging",
        metavar="KEY",
        resume=True,
        invocation=True,
        secret=True,
    )
    # hardware
    device: str = arg("auto", "auto, cpu or cuda[:N]", group="hardware", metavar="DEVICE", resume=True)
    precision: str = arg(
        "auto",
        "the backbone's arithmetic: auto (bf16 autocast on CPUs where it trains faster, else fp32; TF32 on GPUs), "
        "bf16, fp32",
        group="hardware",
        choices=PRECISIONS,
        resume=True,
    )
    compile: bool = arg(
        False,
        "torch.compile the backbone (compiles for a minute or more; for long GPU runs)",
        group="hardware",
        resume=True,
    )
    cuda_graph: bool = arg(
        True,
        "on CUDA, run the rollout policy step as one captured CUDA graph (not with --compile)",
        group="hardware",
        resume=True,
    )
    dist_timeout: float = arg(
        30.0,
        "torchrun: minutes a rank waits for the others before the job fails",
        group="hardware",
        metavar="MINUTES",
        check=POSITIVE,
        resume=True,
    )

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def family(self) -> str:
        return parse_env_id(self.env).family

    @property
    def reward_mode(self) -> str:
        """The training-reward transform, with `auto` resolved per family."""
        if self.reward_scaling != "auto":
            return self.reward_scaling
        return {"atari": "sign", "procgen": "normalize"}.get(self.family, "none")

    def public_dict(self) -> dict:
        """The resolved config without secrets, as written to checkpoints and wandb."""
        return {k: v for k, v in asdict(self).items() if k not in SECRETS}

    def run_file_dict(self) -> dict:
        """What `config.yaml` holds: every setting of the run, without what one invocation does."""
        return {k: v for k, v in asdict(self).items() if k not in INVOCATION_ONLY}

    @classmethod
    def from_checkpoint(cls, saved: dict, where: str) -> Config:
        """A checkpoint's config as a typed Config; a field this version does not know fails loudly."""
        saved = DEFAULTS_BEFORE_CRAFTER_CPU | upgrade_legacy(saved)  # a missing key: saved before it existed
        try:
            return cls(**{k: v for k, v in saved.items() if k not in SECRETS})
        except TypeError as e:
            raise UsageError(f"{where}: config does not match this pixelppo version ({e})") from None


# The defaults until the default run became the crafter-cpu recipe. Checkpoints hold every setting their version
# knew, so one without a key was saved before that setting existed, and ran with the default of its time.
DEFAULTS_BEFORE_CRAFTER_CPU = {
    "steps": 1_000_000, "eval_interval": 100_000, "num_envs": 64, "history_length": 4,
    "backbone": "tf_efficientnetv2_s.in21k_ft_in1k", "pretrained": True, "freeze_backbone": True, "head_hidden": 256,
    "trunk_hidden": 0, "value_norm": False, "lr_schedule": "linear", "num_steps": 128, "update_epochs": 4,
    "gamma": 0.99, "gae_lambda": 0.95, "clip_vloss": True, "vf_coef": 0.5, "adv_norm": "minibatch", "adam_eps": 1e-5,
}  # fmt: skip


def upgrade_legacy(values: dict) -> dict:
    """Settings written by older versions, in today's names: `amp: true|false` became `precision: bf16|fp32`."""
    if "amp" not in values:
        return values
    rest = {k: v for k, v in values.items() if k != "amp"}
    return {"precision": "bf16" if values["amp"] else "fp32"} | rest


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
INVOCATION_ONLY = {name for name, f in FIELDS.items() if f.metadata["invocation"]}
RESUME_OVERRIDES = {name for name, f in FIELDS.items() if f.metadata["resume"]}
SECRETS = {name for name, f in FIELDS.items() if f.metadata["secret"]}


# ------------------------------------------------------------------------------------------ flags


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "") else float(text)


TYPES = {"int": int, "float": float, "str": str, "float | None": optional_float}
METAVARS = {"int": "N", "float": "FLOAT", "float | None": "FLOAT", "str": "NAME"}  # a field's own metavar wins
USAGE = "%(prog)s [-h] [--preset NAME | --config PATH] [--env GAME] [--logdir PATH] [--resume PATH] [--FLAG ...]"


def shown_default(value) -> str:
    """A default as --help shows it: on / off, none or the value; nothing for "" (the help says what it means)."""
    if isinstance(value, bool):
        return f" (default: {'on' if value else 'off'})"
    if value == "":
        return ""
    return f" (default: {'none' if value is None else value})"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with room for metavars; lines break at spaces only, so crafter-moon or --no-pretrained stay whole."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(text, width, break_on_hyphens=False)


def build_parser(description: str = "") -> argparse.ArgumentParser:
    """One flag per Config field, in its group, with its metavar, choices and default; defaults are left out of the
    parsed flags so run files can sit between them and the flags."""
    parser = argparse.ArgumentParser(
        description=description,
        usage=USAGE,
        formatter_class=HelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    groups = {name: parser.add_argument_group(name, about) for name, about in GROUPS.items()}
    for f in FIELDS.values():
        group, help_text = groups[f.metadata["group"]], f.metadata["help"] + shown_default(f.default)
        if f.type == "bool":
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, help=help_text)
        else:
            choices = f.metadata["choices"]
            metavar = f.metadata["metavar"] or (None if choices else METAVARS[f.type])
            group.add_argument(flag(f.name), type=TYPES[f.type], choices=choices, metavar=metavar, help=help_text)
    return parser


def parse_flags(argv: list[str] | None = None, description: str = "") -> dict:
    """The flags given on the command line, as Config field names -> values."""
    return vars(build_parser(description).parse_args(argv))


# -------------------------------------------------------------------------------------- run files


def read_run_file(path: str | os.PathLike) -> dict:
    """A YAML run file -> checked Config values. Unknown keys, wrong types, bad choices and malformed
    YAML are one-line UsageErrors naming the file and the key."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"{path}: not valid YAML ({getattr(e, 'problem', None) or e}{where})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a mapping of settings (key: value), got {type(values).__name__}")
    if text.startswith(RUN_FILE_HEADER):  # written by a run: a missing key did not exist yet (see from_checkpoint)
        values = DEFAULTS_BEFORE_CRAFTER_CPU | values
    return {key: checked_value(path, key, value) for key, value in upgrade_legacy(values).items()}


def checked_value(path, key, value):
    """`value` of `key` from run file `path`, converted to the field's type or rejected."""
    if key not in FIELDS or key == "config" or key in SECRETS:
        close = difflib.get_close_matches(str(key), FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; the README lists every key"
        raise UsageError(f"{path}: unknown key {key!r}{hint}")
    f = FIELDS[key]
    converted = convert(f.type, value)
    if converted is None and not (f.type == "float | None" and value is None):
        expected = {"float | None": "a number or null", "int": "an integer", "float": "a number"}.get(f.type, f.type)
        raise UsageError(f"{path}: {key} must be {expected}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and converted not in choices and converted != f.default:  # a run file writes preset: '' (none)
        raise UsageError(f"{path}: {key} must be one of {', '.join(repr(c) for c in choices)}; got {converted!r}")
    return converted


def convert(kind: str, value):
    """`value` as Config field type `kind`, or None when it is not one (YAML reads 3e-4 as a string)."""
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind == "str":
        return value if isinstance(value, str) else None
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind in ("float", "float | None"):
        if isinstance(value, bool):
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    raise AssertionError(f"no conversion for field type {kind}")


def default_run_file() -> str:
    """configs/default.yaml: every setting of a run with its default and its help (`python config.py` prints it)."""
    lines = [
        "# Every setting of a run with its default: the crafter-cpu recipe (configs/crafter-cpu.yaml says what it",
        "# measured), which `python train.py` runs on a CPU (on a GPU: crafter-moon; other games start from their own",
        "# recipe). Copy it, edit it, and train with `python train.py --config my_run.yaml`.",
    ]
    group = ""
    for name, value in Config().run_file_dict().items():
        if name == "preset":
            continue
        if FIELDS[name].metadata["group"] != group:
            group = FIELDS[name].metadata["group"]
            lines.append(f"# {group}")
        entry = yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"{entry:<45} # {FIELDS[name].metadata['help']}")
    return "\n".join(lines) + "\n"


RUN_FILE_HEADER = "# pixelppo run file: `python train.py --config THIS_FILE --logdir logs/run_N` repeats this run.\n"


def write_run_file(cfg: Config, path: Path, note: str = "") -> None:
    """config.yaml: the run's settings, with an optional comment line `note` (what they resolved to)."""
    from checkpoint import atomic_write

    header = RUN_FILE_HEADER + f"# {note}\n" if note else RUN_FILE_HEADER
    text = header + yaml.safe_dump(cfg.run_file_dict(), sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))


# ------------------------------------------------------------------------------------- resolving


WANDB_VARIABLES = {"WANDB_MODE": "wandb_mode", "WANDB_PROJECT": "wandb_project", "WANDB_ENTITY": "wandb_entity"}
WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # wandb's own older names


def wandb_environment() -> dict:
    """The settings wandb's own environment variables give (WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY), as shells and
    batch scripts set them; WANDB_RUN_GROUP and WANDB_TAGS are read where the wandb run starts (runlog.py)."""
    values = {key: os.environ[name] for name, key in WANDB_VARIABLES.items() if os.environ.get(name)}
    if "wandb_mode" in values:
        mode = WANDB_MODE_ALIASES.get(values["wandb_mode"], values["wandb_mode"])
        choices = FIELDS["wandb_mode"].metadata["choices"]
        if mode not in choices:
            raise UsageError(f"WANDB_MODE={values['wandb_mode']}: must be one of {', '.join(choices)}")
        values["wandb_mode"] = mode
    return values


def config_from_flags(given: dict) -> Config:
    """Defaults < --preset's file < --config's file < wandb's environment variables < flags; checked, with errors
    naming where a value came from."""
    sources: dict[str, str] = {}
    preset = given.get("preset") or default_preset(given)
    values: dict = {"preset": preset}  # recorded in config.yaml: the run names the recipe it started from
    files = [CONFIG_DIR / f"{preset}.yaml"] if preset else []
    if given.get("config"):
        files.append(Path(given["config"]))
    for path in files:
        from_file = read_run_file(path)
        values |= from_file
        sources |= dict.fromkeys(from_file, str(path))
    from_environment = wandb_environment()
    values |= from_environment | given
    sources |= {k: f"${name}" for name, k in WANDB_VARIABLES.items() if k in from_environment}
    sources |= {k: flag(k) for k in given}
    cfg = Config(**values)
    if preset and values.get("env") and parse_env_id(cfg.env).family != family_of_preset(preset):
        raise UsageError(f"preset {preset} is for {family_of_preset(preset)}, not {cfg.env}")
    validate(cfg, sources)
    return cfg


def default_preset(given: dict) -> str:
    """The recipe of a run given neither --preset nor --config: its game family's published one (RECIPES). For
    Crafter the machine picks: on a GPU crafter-moon (their wide IMPALA CNN: 17.0% at 1M steps, about 12 minutes on
    an H200), elsewhere crafter-cpu (the same settings on the Nature CNN: 10.9%, 30 minutes on 2 CPU cores, where
    crafter-moon takes about 9 hours)."""
    if given.get("config"):
        return ""
    family = parse_env_id(given.get("env", Config.env)).family
    if family != "crafter":
        return RECIPES[family]
    from hardware import resolve_device

    return "crafter-moon" if resolve_device(given.get("device", Config.device)).type == "cuda" else "crafter-cpu"


def family_of_preset(name: str) -> str:
    env = read_run_file(CONFIG_DIR / f"{name}.yaml").get("env", Config.env)
    return parse_env_id(env).family


def config_from_args(argv: list[str] | None = None) -> Config:
    """A new run's Config from command-line arguments (see `config_from_flags`)."""
    given = parse_flags(argv)
    if "resume" in given:
        raise UsageError("--resume continues a run from its checkpoint: use train.load_run")
    return config_from_flags(given)


def resumed_config(given: dict, saved: dict, checkpoint: Path) -> Config:
    """The checkpoint's config, with only the flags in RESUME_OVERRIDES allowed to change."""
    if "config" in given or "preset" in given:
        raise UsageError("--config and --preset cannot be combined with --resume (the run keeps its own settings)")
    changed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDES and saved.get(k) != v)
    if changed:
        raise UsageError(
            f"{', '.join(map(flag, changed))} cannot change when resuming (the run keeps its own settings)"
        )
    run_controls = {"stop_after": 0, "overwrite": False}  # what one invocation does, not part of the run
    cfg = Config.from_checkpoint(saved, str(checkpoint))
    cfg = dataclasses.replace(cfg, **(run_controls | wandb_environment() | given))
    cfg.resume, cfg.logdir = str(checkpoint), str(checkpoint.parent)
    return cfg


# ------------------------------------------------------------------------------------- validation


def validate(cfg: Config, sources: dict[str, str] | None = None) -> None:
    """Reject impossible settings before anything starts; messages name the flag or file a value came from."""
    sources = sources or {}

    def where(key: str) -> str:
        source = sources.get(key, flag(key))
        return f"{source} {getattr(cfg, key)}" if source.startswith("--") else f"{source}: {key} = {getattr(cfg, key)}"

    parse_env_id(cfg.env)
    for key, f in FIELDS.items():
        ok, allowed = f.metadata["check"] or (lambda v: True, "")
        if not ok(getattr(cfg, key)):
            raise UsageError(f"{where(key)}: must be {allowed}")
    if cfg.batch_size % cfg.num_minibatches or cfg.num_minibatches > cfg.batch_size:
        raise UsageError(
            f"{where('num_minibatches')}: must divide the batch of {cfg.num_envs} envs x {cfg.num_steps} steps "
            f"= {cfg.batch_size}"
        )
    if cfg.recurrent != "none" and cfg.num_envs % cfg.num_minibatches:
        raise UsageError(
            f"{where('num_minibatches')}: a recurrent policy trains on whole env sequences, so it must divide "
            f"--num-envs {cfg.num_envs}"
        )
    from hardware import resolve_device
    from policy import check_backbone

    check_backbone(cfg.backbone)
    if cfg.pretrained_file and not os.path.isfile(cfg.pretrained_file):
        raise UsageError(f"{where('pretrained_file')}: file not found")
    resolve_device(cfg.device)


if __name__ == "__main__":
    print(default_run_file(), end="")
