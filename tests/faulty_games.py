"""Games that fail on purpose, importable by env worker processes."""

from env_crafter import make_crafter


class RaisingCrafter:
    """A real Crafter env whose 5th step raises, as a buggy game would."""

    def __init__(self, seed: int):
        self.env, self.steps = make_crafter(seed), 0

    def reset(self):
        return self.env.reset()

    def step(self, action):
        self.steps += 1
        if self.steps == 5:
            raise ValueError("the game broke")
        return self.env.step(action)

    def render(self):
        return self.env.render()


def raising_crafter(seed: int) -> RaisingCrafter:
    return RaisingCrafter(seed)
