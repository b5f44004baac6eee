"""caption_consistency on a tiny random BLIP (saved with its BlipProcessor, over a BERT tokenizer
of a small vocabulary, as BLIP's is) and a tiny random sentence-transformers model, on real
footage. Random weights write word salad, so what is tested is what holds for any weights: the
score is the sentence model's cosine between each caption and the prompt, aggregated as asked,
over exactly the frames `scored_frames` names."""
from __future__ import annotations

import pytest
import torch

from rewards import caption_consistency
from rewards.caption_consistency import CaptionConsistency
from tests.conftest import ROOT, compose_cfg
from tests.test_flow_rewards import carphone, clip_of
from vader.protocols import Reward, info_numbers

WORDS = "a the man person riding bike bikes road street car red blue on in of with dog down".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = {t: i for i, t in enumerate([*SPECIAL, *WORDS, "[DEC]", "[ENC]"])}  # [DEC], [ENC]: BLIP's
PROMPTS = ["a man riding a bike down the street", "a red car on the road"]


def bert_tokenizer(**special):
    from transformers import BertTokenizer
    return BertTokenizer(vocab=dict(VOCAB), **special)


@pytest.fixture(scope="module")
def blip(tmp_path_factory) -> str:
    """BLIP's layout scaled down: its tokenizer is BERT's plus [DEC] (the caption's first token)
    and [ENC]; images are squashed to a square (384 for the real model, 32 here)."""
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)
    torch.manual_seed(0)
    # initializer_range 1: at the usual 0.02 a random BLIP writes the same caption for every
    # image, and the tests could not see which frames were captioned.
    text = dict(vocab_size=len(VOCAB), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                bos_token_id=VOCAB["[DEC]"], sep_token_id=VOCAB["[SEP]"], eos_token_id=VOCAB["[SEP]"],
                pad_token_id=VOCAB["[PAD]"], initializer_range=1.0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8, initializer_range=1.0)
    folder = tmp_path_factory.mktemp("blip")
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision,
                                            projection_dim=16)).save_pretrained(folder)
    tokenizer = bert_tokenizer(bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sentence(tmp_path_factory) -> str:
    """A sentence-transformers folder as all-MiniLM-L6-v2 is laid out: a BERT, mean pooling,
    normalisation (modules.json naming them)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    bert = tmp_path_factory.mktemp("bert")
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(bert)
    bert_tokenizer().save_pretrained(bert)
    encoder = Transformer(str(bert))
    folder = tmp_path_factory.mktemp("sentence")
    SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), "mean"),
                                 Normalize()]).save(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def reward(blip, sentence) -> CaptionConsistency:
    return CaptionConsistency(pretrained=blip, sentence_model=sentence)


def two_videos() -> torch.Tensor:
    return torch.cat([clip_of(8), carphone(8)])  # bikes, then a man in a car


def test_scores_real_footage_as_bounded_cosines_and_logs_only_numbers(reward):
    scores, info = reward(two_videos(), PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and (scores.abs() <= 1).all()
    logged = info_numbers(info)
    assert set(logged) == {"caption_similarity_mean", "caption_similarity_min"}
    assert all(v.numel() == 1 and not v.requires_grad for v in logged.values())
    assert logged["caption_similarity_min"] <= logged["caption_similarity_mean"]
    assert logged["caption_similarity_mean"].item() == pytest.approx(scores.mean().item(), abs=1e-6)
    assert [len(c) for c in info["captions"]] == [4, 4]
    assert all(isinstance(c, str) for video in info["captions"] for c in video)


@pytest.mark.parametrize("aggregation", ["mean", "min", "mean+min"])
def test_score_is_the_sentence_models_cosine_of_each_caption_with_its_prompt(
        blip, sentence, monkeypatch, aggregation):
    from sentence_transformers import SentenceTransformer
    captions = ["a man riding a bike", "the road", "a dog on the street", "a man riding a bike",
                "a red car", "a blue car on the road", "a man in a car", "bikes"]
    reward = CaptionConsistency(pretrained=blip, sentence_model=sentence, aggregation=aggregation)
    monkeypatch.setattr(reward, "caption", lambda images: captions[:len(images)])
    scores, info = reward(two_videos(), PROMPTS)
    # Computed apart: the same folder loaded again, its embeddings compared directly.
    model = SentenceTransformer(sentence, device="cpu")
    emb_captions = model.encode(captions, convert_to_tensor=True).view(2, 4, -1)
    emb_prompts = model.encode(PROMPTS, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(emb_captions, emb_prompts[:, None], dim=-1)
    expected = {"mean": cosine.mean(1), "min": cosine.min(1).values,
                "mean+min": (cosine.mean(1) + cosine.min(1).values) / 2}[aggregation]
    assert torch.allclose(scores, expected, atol=1e-5), (scores, expected)
    assert info["caption_similarity_min"].item() == pytest.approx(cosine.min().item(), abs=1e-5)
    assert info["captions"] == [captions[:4], captions[4:]]


def test_a_caption_that_says_the_prompt_scores_above_one_that_does_not(reward, monkeypatch):
    """With random weights only the identical caption is known to win (cosine 1); ranking two
    different captions against a prompt needs the real sentence model."""
    monkeypatch.setattr(reward, "caption", lambda images: [PROMPTS[0]] * 4 + ["a blue dog"] * 4)
    scores, _ = reward(clip_of(8).expand(2, -1, -1, -1, -1), [PROMPTS[0]] * 2)
    assert scores[0].item() == pytest.approx(1.0, abs=1e-5)
    assert scores[1].item() < scores[0].item() - 1e-3


def test_captions_only_the_scored_frames(reward, monkeypatch):
    video = clip_of(16)
    keys = reward.scored_frames(16)
    assert keys.tolist() == [0, 5, 10, 15] and reward.scored_frames(3).tolist() == [0, 1, 2]
    seen = []
    real = reward.caption
    monkeypatch.setattr(reward, "caption", lambda images: seen.append(images) or real(images))
    whole, info = reward(video, PROMPTS[:1])
    assert torch.equal(seen[0], video[0, keys])
    # The random BLIP tells these frames apart, so captioning other frames would show.
    assert len(set(info["captions"][0])) > 1, info["captions"]
    alone, alone_info = reward(video[:, keys], PROMPTS[:1])
    assert alone.item() == pytest.approx(whole.item(), abs=1e-6)
    assert alone_info["captions"] == info["captions"]
    changed = video.clone()
    changed[:, 1:5] = carphone(4)  # frames between the first two captioned ones
    assert reward(changed, PROMPTS[:1])[0].item() == pytest.approx(whole.item(), abs=1e-6)


def test_loads_through_its_yaml_and_the_train_config(blip, sentence):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    node = OmegaConf.load(ROOT / "conf" / "reward_fn" / "caption_consistency.yaml")
    assert node.pretrained == "Salesforce/blip-image-captioning-base"
    assert node.sentence_model == "sentence-transformers/all-MiniLM-L6-v2"
    built = instantiate(node, pretrained=blip, sentence_model=sentence)
    assert isinstance(built, Reward) and not built.differentiable
    assert not built.maximised_by_still_video and built.frames == "all"
    cfg = compose_cfg("reward_fn=caption_consistency", f"reward_fn.pretrained={blip}",
                      f"reward_fn.sentence_model={sentence}", "reward_fn.num_captioned=2")
    from vader.build import build
    assert build(cfg.reward_fn).scored_frames(8).tolist() == [0, 7]


def test_says_what_is_missing_before_loading_anything(blip, sentence, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before every source was checked")
    monkeypatch.setattr(caption_consistency, "load_cached", no_loading)
    with pytest.raises(FileNotFoundError, match="reward_fn.pretrained.*no such folder"):
        CaptionConsistency(pretrained=str(tmp_path / "missing"), sentence_model=sentence)
    with pytest.raises(FileNotFoundError, match="reward_fn.sentence_model.*no such folder"):
        CaptionConsistency(pretrained=blip, sentence_model=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="reward_fn.sentence_model.*HF_HUB_OFFLINE"):
        CaptionConsistency(pretrained=blip, sentence_model="nobody/not-a-cached-model")
    with pytest.raises(FileNotFoundError, match="reward_fn.pretrained.*HF_HUB_OFFLINE"):
        CaptionConsistency(pretrained="nobody/not-a-cached-blip", sentence_model=sentence)
    # A plain transformers folder is not a sentence-transformers one (no modules.json).
    with pytest.raises(FileNotFoundError, match="modules.json is missing"):
        CaptionConsistency(pretrained=blip, sentence_model=blip)


@pytest.mark.parametrize("options, message", [({"frames": "random"}, "not 'random'"),
                                              ({"num_captioned": 0}, "num_captioned"),
                                              ({"max_new_tokens": 0}, "max_new_tokens"),
                                              ({"aggregation": "median"}, "aggregation")])
def test_rejects_bad_options_before_loading(options, message):
    with pytest.raises(ValueError, match=message):
        CaptionConsistency(pretrained="/nowhere", sentence_model="/nowhere", **options)
