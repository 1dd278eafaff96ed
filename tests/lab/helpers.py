"""A tiny BERT with MiniLM's hidden size (the towers emit 384-d tokens) and LoRA specialists of it, so the
lab's export → `ssam merge` → load path is tested in seconds without the 91 MB PyPI model."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.lab import model as lm
from benchmarks.lab import train


def tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=64, hidden_size=lm.HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, max_position_embeddings=32)


def tiny_tokenizer():
    """A word-level tokenizer knowing BERT's special tokens and every word the lab asks or answers."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from benchmarks.lab.evaluate import COMBINED_QUESTION

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    texts = [q for qs in lm.QUESTIONS.values() for q in qs] + [" ".join(a) for a in lm.ANSWERS.values()]
    for w in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(" ".join(texts + [COMBINED_QUESTION])):
        if w[0] not in words:
            words.append(w[0])
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def make_tiny_base(folder: Path) -> Path:
    """Config, weights and tokenizer.json, like the MiniLM folder the lab uses as its base."""
    from transformers import BertModel

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    assert tok.get_vocab_size() <= tiny_bert_config().vocab_size
    BertModel(tiny_bert_config(), add_pooling_layer=False).save_pretrained(str(folder), safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def make_tiny_specialist(base: Path, folder: Path, modality: str, seed: int) -> Path:
    """A LoRA on every LORA_TARGETS layer with random (non-zero) B, and a random tower, exported as the lab does."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    bert = get_peft_model(lm.load_bert(base), LoraConfig(r=lm.LORA_RANK, lora_alpha=lm.LORA_ALPHA,
                                                         target_modules=lm.LORA_TARGETS))
    with torch.no_grad():
        for name, p in bert.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    train.export_specialist(bert, lm.ModalityTower(modality), folder)
    return folder
