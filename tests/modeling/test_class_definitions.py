"""Class definitions in the text classifier (extensions.md §3.6): concepts merged with synonyms,
max / mean over concepts by hand, the cache key, void concepts with a mocked text encoder."""
import math
import uuid

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from dearli.config import add_dearli_config
from dearli.modeling import text_classifier as tc
from dearli.modeling.backbone import OpenCLIPBackbone
from dearli.modeling.class_definitions import mean_over_concepts, merge_concepts

SINGLE = "a photo of a {}."
# Hand-made, unnormalised "text embeddings" of the mocked encoder (4-d).
WORDS = {
    "square": [1.0, 0.0, 0.0, 0.0], "box": [0.0, 2.0, 0.0, 0.0],
    "circle": [0.0, 0.0, 1.0, 0.0], "disc": [0.0, 0.0, 3.0, 4.0],
    "lorry": [0.0, 0.0, 0.0, 5.0],
}


class WordBackbone:
    """A mocked CLIP text tower: the prompt "a photo of a {word}." encodes to WORDS[word]."""

    model_name = "mocked_words"
    embed_dim = 4
    clip_weights_version = 0

    def __init__(self):
        self.clip_logit_scale = torch.tensor(math.log(10.0))
        self.encoded = []

    def weight_fingerprint(self):
        return "mocked"

    def tokenize(self, texts):
        words = [text[len(SINGLE) - 3:-1] for text in texts]
        self.encoded += words
        return torch.tensor([list(WORDS).index(word) for word in words])

    def encode_text(self, tokens):
        return torch.tensor([WORDS[list(WORDS)[int(i)]] for i in tokens])


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    tc.clear_memory_cache()
    yield
    tc.clear_memory_cache()


def unit(vector):
    return F.normalize(torch.tensor(vector), dim=-1)


def dataset_with(stuff_classes, **fields):
    name = f"dearli_class_definitions_test_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(stuff_classes=list(stuff_classes), **fields)
    return name


def text_cfg(dataset, tmp_path, definitions_text=None, **clip_head):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(MetadataCatalog.get(dataset).stuff_classes)
    cfg.MODEL.CLIP_HEAD.EMBED_DIM = 4
    cfg.MODEL.CLIP_HEAD.PROMPT_TEMPLATES = "single"
    cfg.MODEL.CLIP_HEAD.CACHE_DIR = str(tmp_path / "cache")
    if definitions_text is not None:
        path = tmp_path / "defs.txt"
        path.write_text(definitions_text)
        cfg.MODEL.CLIP_HEAD.CLASS_DEFINITIONS = str(path)
    for key, value in clip_head.items():
        setattr(cfg.MODEL.CLIP_HEAD, key, value)
    return cfg


# ---- merge and reductions by hand -----------------------------------------------------------------

def test_concepts_are_appended_to_synonyms_without_duplicates():
    merged = merge_concepts([["square", "box", "box"], ["circle"]], [["square", "cube", "cube"], ["circle"]])
    assert merged == [["square", "box", "box", "cube"], ["circle"]]  # synonyms untouched


def test_mean_with_one_concept_per_class_is_the_identity():
    rows = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    means, num = mean_over_concepts(rows, [1] * 5)
    assert torch.equal(means, rows) and num == [1] * 5


def test_concept_max_and_mean_against_hand_computation(tmp_path):
    """Class square = {square, box}, circle = {circle, disc}; a query e = (1, 1, 1, 1)."""
    dataset = dataset_with(["square", "circle"])
    backbone, query = WordBackbone(), torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    void = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    text = "square: square, box\ncircle: circle, disc\n"
    by_max = tc.TextClassifier(text_cfg(dataset, tmp_path, text))
    rows, num = by_max(backbone)
    assert num == [2, 2] and backbone.encoded == ["square", "box", "circle", "disc"]
    expected_rows = torch.stack([unit(WORDS[w]) for w in ("square", "box", "circle", "disc")])
    assert torch.allclose(rows, expected_rows, atol=1e-7)
    e = query / 2.0  # |(1,1,1,1)| = 2
    cos = {"square": 0.5, "box": 0.5, "circle": 0.5, "disc": 0.7}  # disc = (0,0,.6,.8)
    logits = tc.text_classifier_logits(query, tc.classifier_with_void(rows, void), num,
                                       torch.tensor(math.log(10.0)), 100.0)
    hand_max = [10 * max(cos["square"], cos["box"]), 10 * max(cos["circle"], cos["disc"]), 10 * 0.5]
    assert torch.allclose(logits, torch.tensor([hand_max]), atol=1e-5)

    by_mean = tc.TextClassifier(text_cfg(dataset, tmp_path, text, CONCEPT_AGGREGATION="mean"))
    mean_rows, mean_num = by_mean(backbone)
    square = unit([1.0, 1.0, 0.0, 0.0])  # normalised mean of (1,0,0,0) and (0,1,0,0)
    circle = unit([0.0, 0.0, 1.6, 0.8])  # normalised mean of (0,0,1,0) and (0,0,.6,.8)
    assert mean_num == [1, 1] and torch.allclose(mean_rows, torch.stack([square, circle]), atol=1e-7)
    mean_logits = tc.text_classifier_logits(query, tc.classifier_with_void(mean_rows, void), mean_num,
                                            torch.tensor(math.log(10.0)), 100.0)
    hand_mean = [10 * float(e[0] @ square), 10 * float(e[0] @ circle), 5.0]
    assert torch.allclose(mean_logits, torch.tensor([hand_mean]), atol=1e-5)


# ---- definitions = names: the baseline, bit for bit ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip():
    return OpenCLIPBackbone(model_name="dearli_convnext_tiny_test")


def test_definitions_equal_to_names_give_the_baseline_bit_for_bit(tiny_clip, tmp_path):
    dataset = dataset_with(["square", "circle", "sky"], class_synonyms=[["square", "box"], ["circle"], ["sky"]])
    baseline = tc.TextClassifier(text_cfg(dataset, tmp_path, EMBED_DIM=64))
    defined = tc.TextClassifier(text_cfg(dataset, tmp_path, "square: square\ncircle: circle\nsky: sky\n",
                                         EMBED_DIM=64))
    (rows, num), (defined_rows, defined_num) = baseline(tiny_clip), defined(tiny_clip)
    assert defined.class_synonyms == baseline.class_synonyms and defined_num == num
    assert torch.equal(defined_rows, rows) and defined_rows is not rows  # another cache entry, same bits
    embeddings = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(1))
    void = torch.randn(1, 64, generator=torch.Generator().manual_seed(2))
    scale = torch.tensor(math.log(20.0))
    assert torch.equal(tc.text_classifier_logits(embeddings, tc.classifier_with_void(defined_rows, void), num, scale, 100.0),
                       tc.text_classifier_logits(embeddings, tc.classifier_with_void(rows, void), num, scale, 100.0))


# ---- the cache key follows the file's content ------------------------------------------------------

def test_changing_a_definition_changes_the_cache_key(tmp_path):
    dataset = dataset_with(["square", "circle"])
    backbone = WordBackbone()
    tc.TextClassifier(text_cfg(dataset, tmp_path, "square: square\ncircle: circle\n"))(backbone)
    tc.TextClassifier(text_cfg(dataset, tmp_path, "square: square, box\ncircle: circle\n"))(backbone)
    # Same merged lists, other file bytes (a comment): still a new key, as the key holds the sha256.
    tc.TextClassifier(text_cfg(dataset, tmp_path, "# v2\nsquare: square, box\ncircle: circle\n"))(backbone)
    assert len(list((tmp_path / "cache").iterdir())) == 3
    plain = tc.cache_key("m", "w", [["square"]], ["{}"])
    assert tc.cache_key("m", "w", [["square"]], ["{}"], "") == plain  # no file: today's key
    assert tc.cache_key("m", "w", [["square"]], ["{}"], "ab12") != plain


# ---- void concepts ------------------------------------------------------------------------------

def test_void_concepts_make_a_matching_query_void(tmp_path):
    dataset = dataset_with(["square", "circle"])
    text = "square: square\ncircle: circle\nvoid: lorry\n"
    learned_void = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    query = torch.tensor([[0.0, 0.0, 0.6, 0.8]])  # cos: square 0, circle 0.6, learned void 0, lorry 0.8
    scale = torch.tensor(math.log(10.0))
    logits = {}
    for on in (False, True):
        classifier = tc.TextClassifier(text_cfg(dataset, tmp_path, text, VOID_CONCEPTS=on))
        backbone = WordBackbone()
        rows, num = classifier(backbone)
        void_rows = classifier.void_concept_rows(backbone)
        assert (void_rows is None) == (not on)
        full = tc.classifier_with_void(rows, learned_void, void_rows)
        assert full.shape == (3 + on, 4)
        logits[on] = tc.text_classifier_logits(query, full, num, scale, 100.0)
    assert torch.allclose(logits[False], torch.tensor([[0.0, 6.0, 0.0]]), atol=1e-5)
    assert torch.allclose(logits[True], torch.tensor([[0.0, 6.0, 8.0]]), atol=1e-5)  # max(0, 10 * 0.8)
    assert logits[False].argmax().item() == 1 and logits[True].argmax().item() == 2  # void


def test_learned_void_wins_when_it_is_larger():
    row_logits = torch.tensor([[1.0, 2.0, 7.0, 3.0, 5.0]])  # 2 class rows, learned void 7, void concepts 3, 5
    out = tc.max_over_synonyms(row_logits, torch.tensor([0, 1]), 2)
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 7.0]]))


@pytest.mark.parametrize("definitions, clip_head, message", [
    (None, {"VOID_CONCEPTS": True}, "VOID_CONCEPTS needs a MODEL.CLIP_HEAD.CLASS_DEFINITIONS file"),
    ("square: square\ncircle: circle\n", {"VOID_CONCEPTS": True}, "VOID_CONCEPTS is on but .*defs.txt has no 'void:'"),
    ("square: square\ncircle: circle\n", {"CLASS_EMBEDDING": "orthogonal"}, "needs CLASS_EMBEDDING='text'"),
    (None, {"CONCEPT_AGGREGATION": "median"}, r"CONCEPT_AGGREGATION='median'; expected one of \('max', 'mean'\)"),
    ("square: square\n", {}, r"defs.txt: no line for the classes \['circle'\]"),
])
def test_config_errors(tmp_path, definitions, clip_head, message):
    dataset = dataset_with(["square", "circle"])
    with pytest.raises(ValueError, match=message):
        tc.TextClassifier(text_cfg(dataset, tmp_path, definitions, **clip_head))


def test_the_meta_architecture_appends_void_concept_rows(tmp_path):
    """DEARLi.classifier() = text rows, learned void row, then the void concept rows."""
    from types import SimpleNamespace

    from dearli.modeling.meta_arch import DEARLi

    dataset = dataset_with(["square", "circle"])
    classifier = tc.TextClassifier(text_cfg(dataset, tmp_path, "square: square\ncircle: circle\nvoid: lorry\n",
                                            VOID_CONCEPTS=True))
    model = SimpleNamespace(text_classifier=classifier, backbone=WordBackbone(),
                            void_embedding=torch.nn.Embedding(1, 4), device=torch.device("cpu"))
    rows, num = DEARLi.classifier(model)
    assert num == [1, 1] and rows.shape == (4, 4)
    assert torch.allclose(rows[2], F.normalize(model.void_embedding.weight[0], dim=-1))
    assert torch.allclose(rows[3], unit(WORDS["lorry"]))
