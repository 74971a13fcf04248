"""The model settings that decide how text becomes ids are fixed once, at load time, in the codec:
every stage (training, label scoring, generation) reads them from there."""

import torch

from mta.evaluate import label_logprobs
from mta.training import Sample, encode_sample
from suite.models import ModelConfig, generate, load_base


def test_codec_carries_the_model_settings_to_every_stage():
    model, codec = load_base(ModelConfig(name="tiny", max_length=48, chat_template=False))
    assert (codec.max_length, codec.chat) == (48, False)
    assert codec.format("hi") == "hi\n"  # no chat template: the prompt as is
    long = "word " * 200
    # training: prompt + target fit the budget; the target survives the cut
    e = encode_sample(codec, Sample(long, "comedy"))
    assert len(e["input_ids"]) == 48 and e["labels"][-1] == codec.eos_id
    # label scoring and generation cut the same prompt from the left, leaving room for the answer
    assert len(codec.prompt_ids(long, reserve=16)) == 32
    assert codec.prompt_ids(long)[-5:] == codec.ids(codec.format(long))[-5:]
    scores = label_logprobs(model, codec, long, ["comedy", "action"])
    assert scores.shape == (2,) and torch.isfinite(torch.as_tensor(scores)).all()
    assert isinstance(generate(model, codec, long, max_new_tokens=4), str)


def test_chat_template_is_on_by_default_and_changes_the_ids():
    _, codec = load_base(ModelConfig(name="tiny"))
    assert codec.chat and codec.max_length == 512
    text = codec.format("hi")
    assert text.startswith("<|im_start|>user\nhi") and text.endswith("<|im_start|>assistant\n")
    plain = type(codec)(codec.tok, codec.max_length, chat=False)
    assert encode_sample(codec, Sample("hi", "x"))["input_ids"] != encode_sample(plain, Sample("hi", "x"))["input_ids"]
