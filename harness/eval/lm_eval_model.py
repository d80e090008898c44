"""A harness model as an lm-evaluation-harness LM: its scoring is lm_eval's (task prompts, few-shot
contexts, metrics), the model's is ours.

Every sequence starts with the model's `<bos>`, as in training. A text-to-image model scores with
its whole vocabulary, so probability it moved to image codes counts against it. Requests are
scored in batches sorted by length (right padding, which a causal model never attends to);
generation is greedy, batched with left padding, over a KV cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM

from harness.errors import HarnessError
from harness.model.open_lm import KVCache, OpenLM


class HarnessLM(LM):
    def __init__(self, model: OpenLM, tokenizer, bos: int, eos: int, pad: int, max_length: int,
                 batch_size: int = 16) -> None:
        super().__init__()
        self.model, self.text_tokenizer = model.eval(), tokenizer
        self.bos, self.eos, self.pad, self.max_length, self.batch_size = bos, eos, pad, max_length, batch_size
        self.torch_device = next(model.parameters()).device

    def ids(self, text: str) -> list[int]:
        return self.text_tokenizer.encode(text, add_special_tokens=False).ids

    # --- lm_eval's three request types -------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation after `<bos> context`, whether it is greedy)."""
        pairs = [([self.bos, *self.ids(context)], self.ids(continuation)) for context, continuation in
                 (_whitespace_to_continuation(*r.args) for r in requests)]
        return self.score(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-probability of a whole text, in disjoint windows of the model's context, each window's
        tokens predicted from the tokens before them (the first from `<bos>`)."""
        results = []
        for (text,) in (r.args for r in requests):
            tokens = [self.bos, *self.ids(text)]
            # Targets start..end-1 (target t is token t + 1), after as many tokens as fit before them.
            windows = [(tokens[max(0, end - self.max_length):start + 1], tokens[start + 1:end + 1])
                       for start, end in _spans(len(tokens) - 1, self.max_length)]
            results.append(sum(total for total, _ in self.score(windows)))
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        answers = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            answers += self.greedy([r.args[0] for r in batch], [r.args[1] for r in batch])
        return answers

    # --- the model ---------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Each (context ids, continuation ids): summed log-probability and greedy match."""
        found: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            rows = [(pairs[i][0] + pairs[i][1])[-(self.max_length + 1):] for i in chosen]
            width = max(len(r) for r in rows) - 1
            tokens = torch.tensor([r[:-1] + [self.pad] * (width - len(r) + 1) for r in rows], device=self.torch_device)
            logits = self.model(tokens)
            for row, i in enumerate(chosen):
                continuation = pairs[i][1]
                if not 0 < len(continuation) <= self.max_length:
                    raise HarnessError(f"lm_eval request with a continuation of {len(continuation)} tokens: "
                                       f"this model scores 1 to {self.max_length} (its context)")
                end = len(rows[row]) - 1
                # Only the continuation's positions: a paper-scale vocabulary over every position
                # of a batch would not fit.
                predicted = F.log_softmax(logits[row, end - len(continuation):end].float(), -1)
                targets = torch.tensor(continuation, dtype=torch.long, device=self.torch_device)
                found[i] = (float(predicted.gather(1, targets[:, None]).sum()),
                            bool((predicted.argmax(-1) == targets).all()))
        return found  # type: ignore[return-value]

    @torch.no_grad()
    def greedy(self, contexts: list[str], settings: list[dict]) -> list[str]:
        """Greedy continuations, stopped at `<eos>`, at `max_gen_toks` or at the first stop string
        (and cut there: lm_eval does not cut them)."""
        until = [_stop_strings(s) for s in settings]
        # Each row stops at its own max_gen_toks, within half the model's context; the prompt keeps the rest.
        limits = [min(int(s.get("max_gen_toks", 256)), self.max_length // 2) for s in settings]
        limit = max(limits)
        room = self.max_length - limit
        prompts = [[self.bos, *self.ids(c)][-room:] for c in contexts]
        width = max(len(p) for p in prompts)
        tokens = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts], device=self.torch_device)
        valid = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts], device=self.torch_device)
        cache, step_tokens = KVCache(), tokens
        generated: list[list[int]] = [[] for _ in prompts]
        finished = [False] * len(prompts)
        for _ in range(limit):
            positions = (valid.long().cumsum(1) - 1).clamp(min=0)[:, -step_tokens.shape[1]:]
            next_ids = self.model(step_tokens, cache=cache, positions=positions, key_valid=valid)[:, -1].argmax(-1)
            for row, token in enumerate(next_ids.tolist()):
                if not finished[row]:
                    finished[row] = token == self.eos
                    if not finished[row]:
                        generated[row].append(token)
                        text = self.text_tokenizer.decode(generated[row])
                        finished[row] = (len(generated[row]) >= limits[row]
                                         or any(stop in text for stop in until[row]))
            if all(finished):
                break
            step_tokens = next_ids[:, None]
            valid = torch.cat([valid, torch.ones_like(step_tokens, dtype=torch.bool)], 1)
        return [_cut(self.text_tokenizer.decode(g), stops) for g, stops in zip(generated, until)]


def _whitespace_to_continuation(context: str, continuation: str) -> tuple[str, str]:
    """lm_eval's own split: whitespace ending the context belongs to the continuation."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def _spans(count: int, window: int) -> list[tuple[int, int]]:
    """Disjoint [start, end) target spans over `count` targets (target t is token t + 1)."""
    return [(start, min(start + window, count)) for start in range(0, count, window)]


def _stop_strings(settings: dict) -> list[str]:
    until = settings.get("until") or []
    return [until] if isinstance(until, str) else list(until)


def _cut(text: str, stops: list[str]) -> str:
    for stop in stops:
        text = text.split(stop)[0]
    return text
