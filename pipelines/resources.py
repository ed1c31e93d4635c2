"""Dagster resources: every external system behind one configurable object."""
from contextlib import contextmanager, nullcontext
from types import ModuleType
from typing import Iterator, Literal, Optional

import dagster as dg

from foundations import storage as storage_module


class DataRoot(dg.ConfigurableResource):
    """The data root every asset reads and writes (landing, lake, hub, checkpoints, cache).

    `path` None keeps `$ROBOCURATE_HOME` (default `.robocurate/`); a path here redirects every
    storage call of the run, which is how tests give a run its own folder.
    """

    path: Optional[str] = None

    @contextmanager
    def yield_for_execution(self, context) -> Iterator["DataRoot"]:
        with storage_module.using_root(self.path) if self.path else nullcontext():
            yield self

    @property
    def storage(self) -> ModuleType:
        """`foundations.storage`, rooted at this resource's path while the run executes."""
        return storage_module


class HubToken(dg.ConfigurableResource):
    """Hugging Face Hub credentials for pushing dataset versions. Configure `token` with
    `dg.EnvVar("HF_TOKEN")`: Dagster then never shows or stores the value."""

    token: Optional[str] = None


class RefereeResource(dg.ConfigurableResource):
    """The referee LLM. Default: SmolLM2-135M-Instruct run here by transformers.

    `backend: openai` points at any OpenAI-compatible server (vLLM, llama.cpp server,
    `transformers serve`) that returns logprobs: a large model is a configuration change.
    The API key is read from the environment variable named by `api_key_env`, never
    from configuration, and is never logged.
    """

    backend: Literal["local", "openai"] = "local"
    model_dir: Optional[str] = None  # local: a transformers folder; None = the converted SmolLM2
    base_url: Optional[str] = None  # openai: e.g. http://127.0.0.1:8000/v1
    model: Optional[str] = None  # openai: the served model's name
    api: Literal["chat", "completions", "systemone"] = "chat"
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    batch_size: int = 16
    retries: int = 3  # openai: more tries for a server that is down or overloaded, with doubling backoff
    # Control steps per judged segment: 2 s at 20 Hz keeps the CPU default to minutes for a fleet;
    # a served large model can afford 20 (1 s).
    segment_steps: int = 40
    # local: fine-tune the embedded model with LoRA (the `referee_model` asset) before it labels.
    # Its teacher is the served model at teacher_base_url when set, else the robot's measured progress.
    fine_tune: bool = True
    teacher_base_url: Optional[str] = None
    teacher_model: Optional[str] = None
    teacher_api: Literal["chat", "completions", "systemone"] = "completions"
    # openai and teacher, api "completions": a tokenizer folder or Hub id whose chat template wraps each
    # prompt, so a raw-prompt endpoint reads what the model's chat endpoint would (None: sent as is).
    chat_template_from: Optional[str] = None

    def make_backend(self, adapter_dir: Optional[str] = None):
        from quality.llm_backends import LocalLLMBackend, OpenAICompatibleBackend

        if self.backend == "openai":
            if not self.base_url or not self.model:
                raise ValueError("referee backend 'openai' needs base_url and model")
            return OpenAICompatibleBackend(
                self.base_url, self.model, api=self.api, api_key_env=self.api_key_env, batch_size=self.batch_size,
                retries=self.retries, chat_template_from=self.chat_template_from if self.api == "completions" else None,
            )
        return LocalLLMBackend(self.model_dir, batch_size=self.batch_size, adapter_dir=adapter_dir)

    def make_teacher(self):
        """The served model that labels the fine-tuning data, or None (weak labels from measured progress)."""
        from quality.llm_backends import OpenAICompatibleBackend

        if not self.teacher_base_url:
            return None
        if not self.teacher_model:
            raise ValueError("referee teacher_base_url needs teacher_model, the served model's name")
        return OpenAICompatibleBackend(self.teacher_base_url, self.teacher_model, api=self.teacher_api,
                                       api_key_env=self.api_key_env, batch_size=self.batch_size, retries=self.retries,
                                       chat_template_from=self.chat_template_from if self.teacher_api == "completions" else None)
