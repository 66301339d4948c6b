"""Clipped PPO update (Schulman et al. 2017) with CleanRL's implementation details."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn as nn
from torch.distributions import Categorical

from augment import UcbSelector, augment, usable_transforms
from buffer import RolloutBuffer
from distributed import Ranks
from policy import ActorCritic


class PPOSettings(Protocol):
    """The PPO fields of config.Config, the one dataclass that holds every hyperparameter."""

    lr: float
    lr_schedule: str
    update_epochs: int
    num_minibatches: int
    clip_coef: float
    clip_vloss: bool
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    target_kl: float | None
    adv_norm: str
    adam_eps: float
    augment: str
    drac_coef: float


def scheduled_lr(hp: PPOSettings, progress: float) -> float:
    """The learning rate at `progress` in [0, 1) of training."""
    if hp.lr_schedule == "linear":
        return hp.lr * (1.0 - progress)
    if hp.lr_schedule == "cosine":
        return hp.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return hp.lr


def ppo_loss(
    new_logprob: torch.Tensor,
    entropy: torch.Tensor,
    new_value: torch.Tensor,
    old_logprob: torch.Tensor,
    old_value: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    hp: PPOSettings,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """All tensors (B,). Returns the total loss and its pieces (detached)."""
    logratio = new_logprob - old_logprob
    ratio = logratio.exp()
    if hp.adv_norm == "minibatch" and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    # clipped surrogate objective, as a loss: max of the two negated terms
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - hp.clip_coef, 1 + hp.clip_coef)).mean()

    if hp.clip_vloss:
        clipped_value = old_value + (new_value - old_value).clamp(-hp.clip_coef, hp.clip_coef)
        v_loss = 0.5 * torch.max((new_value - returns) ** 2, (clipped_value - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((new_value - returns) ** 2).mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - hp.ent_coef * entropy_loss + hp.vf_coef * v_loss
    with torch.no_grad():
        pieces = {
            "policy_loss": pg_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": entropy_loss.detach(),
            "old_approx_kl": (-logratio).mean(),
            "approx_kl": ((ratio - 1) - logratio).mean(),  # unbiased, low-variance estimator (Schulman)
            "clipfrac": ((ratio - 1.0).abs() > hp.clip_coef).float().mean(),
            "loss": loss.detach(),
        }
    return loss, pieces


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - pred] / Var[target]; nan when the target is constant."""
    var_target = target.var().item()
    return math.nan if var_target == 0 else 1.0 - (target - pred).var().item() / var_target


class PPO:
    """Owns the optimizer; `update` runs epochs of minibatch SGD on one rollout."""

    def __init__(self, policy: ActorCritic, hp: PPOSettings, seed: int = 0, ranks: Ranks | None = None):
        self.policy = policy
        self.hp = hp
        self.ranks = ranks or Ranks()  # under torchrun: gradients (and value statistics) averaged over ranks
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=hp.lr, eps=hp.adam_eps)
        self.generator = torch.Generator().manual_seed(seed)
        transforms = usable_transforms(policy.spec.frame_channels)
        self.ucb = UcbSelector(transforms) if hp.augment == "ucb" else None  # UCB-DrAC picks each update's
        self.augmentation = hp.augment  # the transform of the regularizers in this update

    def state(self) -> dict:
        """What an update changes (trained parameters, buffers such as value statistics, optimizer, minibatch
        RNG), copied: `load_state` puts it back."""
        return {
            "params": [p.detach().clone() for p in self.params],
            "buffers": [b.clone() for b in self.policy.buffers()],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "ucb": None if self.ucb is None else self.ucb.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        targets = [*self.params, *self.policy.buffers()]
        with torch.no_grad():
            for target, saved in zip(targets, state["params"] + state["buffers"], strict=True):
                target.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.ucb is not None:
            self.ucb.load_state_dict(state["ucb"])

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def minibatch_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Cached features as they are; frames (B, K*C, H, W) through the backbone."""
        return inputs if self.policy.caches_features else self.policy.features(inputs)

    def drac_regularizers(self, mb, logits: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DrAC's regularizers (Raileanu et al. 2021) on augmented frames f(s) of the minibatch, given the policy's
        logits (B, A) and values (B,) on the clean frames s, both held fixed:
        - policy: KL(pi(.|s) || pi(.|f(s))). DrAC's code writes it as -log pi(a|f(s)) with a drawn from pi(.|s);
          that is this KL plus the entropy of pi(.|s), a constant here, so its gradient is this one's in
          expectation, without the sampling noise (and it is 0 when f is the identity);
        - value: 0.5 (V(s) - V(f(s)))^2 in the value head's units, those of the value loss it joins: normalized
          returns with value_norm. DrAC weighs it against a value loss in the same units, on values of about unit
          scale (auto-drac's VecNormalize divides rewards by a running std of the discounted return); in return
          units it would weigh sigma^2 times more than alpha_r says (sigma: the normalizer's std of the returns).
        A recurrent minibatch's env sequences each get one draw of the augmentation's parameters."""
        groups = 0 if mb.initial_state is None else len(mb.initial_state)
        frames = augment(mb.inputs, self.augmentation, self.generator, self.policy.spec.frame_channels, groups)
        aug_logits, aug_value = self.policy.minibatch_heads(self.policy.features(frames), mb.initial_state, mb.starts)
        clean = logits.detach().log_softmax(-1)
        policy_reg = (clean.exp() * (clean - aug_logits.log_softmax(-1))).sum(-1).mean()
        value_reg = 0.5 * (value.detach() - aug_value).square().mean()
        return policy_reg, value_reg

    def update(self, buffer: RolloutBuffer, should_stop: Callable[[], bool] = lambda: False) -> dict[str, float] | None:
        """-> mean of each loss piece over the applied minibatches, plus grad norm, explained variance and
        how many minibatches were skipped for a non-finite loss or gradient (they never touch the weights);
        None when `should_stop()` (asked before every minibatch) cut the update short. Under torchrun every
        decision that changes what runs next (skips, the KL early stop, stopping) is the same on all ranks."""
        self.policy.train()
        if self.ucb is not None:  # this rollout is the outcome of the last update's transform
            if self.ucb.current is not None:
                self.ucb.record(self.ranks.mean(buffer.returns.mean()).item())
            self.augmentation = self.ucb.select()
        if self.hp.adv_norm == "batch":
            buffer.normalize_advantages()
        normalizer = self.policy.value_normalizer
        sums: dict[str, torch.Tensor] = {}  # summed on the device, read once at the end
        applied = skipped = epochs = 0
        while epochs < self.hp.update_epochs:
            epochs += 1
            epoch_kl = []
            for mb in buffer.minibatches(self.hp.num_minibatches, self.generator):
                if should_stop():
                    return None
                features = self.minibatch_features(mb.inputs)  # the PPO loss sees clean frames only
                logits, new_value = self.policy.minibatch_heads(features, mb.initial_state, mb.starts)
                dist = Categorical(logits=logits, validate_args=False)
                new_logprob, entropy = dist.log_prob(mb.actions), dist.entropy()
                old_values, returns = mb.values, mb.returns
                if normalizer is not None:  # the head predicts normalized returns (Moon et al.'s ScaledMSEHead)
                    statistics = {k: v.clone() for k, v in normalizer.state_dict().items()}  # kept if skipped
                    normalizer.update(returns, self.ranks.mean)
                    old_values, returns = normalizer.normalize(old_values), normalizer.normalize(returns)
                loss, pieces = ppo_loss(
                    new_logprob, entropy, new_value, mb.logprobs, old_values, mb.advantages, returns, self.hp
                )
                if self.hp.augment != "none":
                    policy_reg, value_reg = self.drac_regularizers(mb, logits, new_value)
                    loss = loss + self.hp.drac_coef * (policy_reg + value_reg)
                    pieces |= {
                        "drac_policy": policy_reg.detach(),
                        "drac_value": value_reg.detach(),
                        "loss": loss.detach(),
                    }
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                any_bad_loss = self.ranks.average_gradients(self.params, ~torch.isfinite(loss.detach()))
                grad_norm = nn.utils.clip_grad_norm_(self.params, self.hp.max_grad_norm)
                if any_bad_loss | ~torch.isfinite(grad_norm):  # the one host-device sync per minibatch
                    self.optimizer.zero_grad(set_to_none=True)
                    if normalizer is not None:  # a skipped minibatch leaves the value statistics as they were
                        normalizer.load_state_dict(statistics)
                    skipped += 1
                    continue
                self.optimizer.step()
                for k, v in (pieces | {"grad_norm": grad_norm.detach()}).items():
                    sums[k] = sums.get(k, 0.0) + v
                epoch_kl.append(pieces["approx_kl"])
                applied += 1
            if self.hp.target_kl is not None and self.mean_kl(epoch_kl) > self.hp.target_kl:
                break  # early stop: the policy moved too far from the rollout policy
        stats = {k: float(v) / max(applied, 1) for k, v in sums.items()}
        stats |= {"epochs": epochs, "minibatches": applied + skipped, "skipped_minibatches": skipped}
        stats["explained_variance"] = explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        if self.ucb is not None:
            stats["ucb_transform"] = self.ucb.current  # the index in usable_transforms of the frames
        return stats

    def mean_kl(self, epoch_kl: list[torch.Tensor]) -> float:
        """The epoch's mean approx KL over every rank's minibatches: one early-stop decision for all ranks."""
        device = self.params[0].device
        kl = torch.stack(epoch_kl).mean() if epoch_kl else torch.zeros((), device=device)
        return float(self.ranks.mean(kl))
