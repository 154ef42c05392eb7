"""Text classifier: class mapping by dataset id, encoding, caches, orthogonal embedding."""
import uuid

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from dearli.config import add_dearli_config
from dearli.modeling import text_classifier as tc
from dearli.modeling.backbone import OpenCLIPBackbone


@pytest.fixture(scope="module")
def backbone():
    return OpenCLIPBackbone(model_name="dearli_convnext_tiny_test")


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    tc.clear_memory_cache()
    yield
    tc.clear_memory_cache()


def register_metadata(**fields):
    name = f"dearli_text_classifier_test_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(**fields)
    return name


def count_encodings(monkeypatch):
    calls = []
    real = tc.encode_class_synonyms

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(tc, "encode_class_synonyms", counting)
    return calls


# ---- classes of a dataset -----------------------------------------------------------------------

def test_synonyms_follow_dataset_ids_not_line_order(tmp_path):
    path = tmp_path / "animals.txt"
    path.write_text("1:cat,kitty\n2:dog\n3:invalid_class_id\n4:bird,birds")
    name = register_metadata(stuff_dataset_id_to_contiguous_id={4: 0, 1: 1, 2: 2},
                             stuff_classes=["bird", "cat", "dog"])
    synonyms = tc.class_synonyms_for_dataset(MetadataCatalog.get(name), str(path))
    assert synonyms == [["bird", "birds"], ["cat", "kitty"], ["dog"]]


def test_metadata_prompt_file_and_fallbacks():
    ade = register_metadata(prompt_file="ade20k_150", stuff_classes=["x"] * 150,
                            stuff_dataset_id_to_contiguous_id={i: i for i in range(150)})
    assert tc.class_synonyms_for_dataset(MetadataCatalog.get(ade))[3] == ["floor", "flooring"]
    listed = register_metadata(class_synonyms=[["a", "b"], ["c"]], stuff_classes=["a", "c"])
    assert tc.class_synonyms_for_dataset(MetadataCatalog.get(listed)) == [["a", "b"], ["c"]]
    plain = register_metadata(stuff_classes=["square", "circle"])
    assert tc.class_synonyms_for_dataset(MetadataCatalog.get(plain)) == [["square"], ["circle"]]


def test_category_without_a_prompt_line_is_an_error():
    name = register_metadata(stuff_dataset_id_to_contiguous_id={12: 0, 1: 1})
    with pytest.raises(ValueError, match=r"category ids \[12\].*coco_panoptic"):
        tc.class_synonyms_for_dataset(MetadataCatalog.get(name), "coco_panoptic")


def test_class_count_must_match_num_classes():
    with pytest.raises(ValueError, match=r"NUM_CLASSES=150 .*'coco'.* 133 classes"):
        tc.check_class_count([["x"]] * 133, 150, "coco")


# ---- encoding -----------------------------------------------------------------------------------

def test_rows_are_template_means_of_normalised_embeddings(backbone):
    classes = [["cat", "kitty"], ["dog"]]
    templates = ["a photo of a {}.", "There is a {} in the scene"]
    rows, num_synonyms = tc.encode_class_synonyms(backbone, classes, templates, batch_size=3)
    assert num_synonyms == [2, 1] and rows.shape == (3, 64)
    for row, name in zip(rows, ["cat", "kitty", "dog"]):
        tokens = backbone.tokenize([t.format(name) for t in templates])
        per_template = F.normalize(backbone.clip_model.encode_text(tokens).detach(), dim=-1)
        torch.testing.assert_close(row, F.normalize(per_template.mean(0), dim=0))


def test_class_logit_is_the_max_over_its_synonyms(backbone):
    rows, num_synonyms = tc.encode_class_synonyms(backbone, [["cat", "kitty"], ["dog"]], ["{}"], 8)
    classifier = tc.classifier_with_void(rows, torch.randn(1, 64))
    query = rows[1]  # exactly the second synonym of class 0
    logits = tc.text_classifier_logits(query[None], classifier, num_synonyms, torch.tensor(0.0), 100.0)
    cosines = query @ classifier.T
    assert logits.shape == (1, 3)
    torch.testing.assert_close(logits[0], torch.stack([cosines[:2].max(), cosines[2], cosines[3]]))
    torch.testing.assert_close(logits[0, 0], torch.tensor(1.0))


# ---- caches -------------------------------------------------------------------------------------

def test_memory_cache_hit_returns_the_shared_result(backbone, tmp_path, monkeypatch):
    calls = count_encodings(monkeypatch)
    first = tc.get_text_classifier(backbone, [["cat"], ["dog"]], ["{}"], cache_dir=tmp_path)
    second = tc.get_text_classifier(backbone, [["cat"], ["dog"]], ["{}"], cache_dir=tmp_path)
    assert second is first and len(calls) == 1


def test_disk_cache_round_trip(backbone, tmp_path, monkeypatch):
    calls = count_encodings(monkeypatch)
    rows, num_synonyms = tc.get_text_classifier(backbone, [["cat", "kitty"]], ["{}"], cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("dearli_convnext_tiny_test-")
    stored = torch.load(files[0], weights_only=True)
    assert torch.equal(stored["rows"], rows) and stored["num_synonyms"] == [2]

    tc.clear_memory_cache()  # as in a new process
    again_rows, again_num = tc.get_text_classifier(backbone, [["cat", "kitty"]], ["{}"], cache_dir=tmp_path)
    assert torch.equal(again_rows, rows) and again_num == [2] and len(calls) == 1


@pytest.mark.parametrize("change", ["synonyms", "templates", "text weights"])
def test_any_key_change_misses_the_cache(change, tmp_path, monkeypatch):
    backbone = OpenCLIPBackbone(model_name="dearli_convnext_tiny_test")
    calls = count_encodings(monkeypatch)
    classes, templates = [["cat"], ["dog"]], ["{}"]
    before, _ = tc.get_text_classifier(backbone, classes, templates, cache_dir=tmp_path)
    if change == "synonyms":
        classes = [["cat", "kitty"], ["dog"]]
    elif change == "templates":
        templates = ["a photo of a {}."]
    else:
        with torch.no_grad():
            backbone.clip_model.ln_final.bias.add_(0.5)
    after, _ = tc.get_text_classifier(backbone, classes, templates, cache_dir=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.iterdir())) == 2
    assert after.shape != before.shape or not torch.equal(after, before)


def test_unreadable_cache_file_is_rebuilt(backbone, tmp_path, monkeypatch):
    tc.get_text_classifier(backbone, [["cat"]], ["{}"], cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"truncated")
    tc.clear_memory_cache()
    calls = count_encodings(monkeypatch)
    rows, _ = tc.get_text_classifier(backbone, [["cat"]], ["{}"], cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(torch.load(path, weights_only=True)["rows"], rows)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


# ---- orthogonal embedding, void row, TextClassifier ----------------------------------------------

def test_orthogonal_embedding_is_orthonormal_and_fixed():
    rows, num_synonyms = tc.orthogonal_class_embedding(5, 16)
    assert rows.shape == (5, 16) and num_synonyms == [1] * 5
    torch.testing.assert_close(rows @ rows.T, torch.eye(5), atol=1e-6, rtol=0)
    assert torch.equal(tc.orthogonal_class_embedding(5, 16)[0], rows)
    with pytest.raises(ValueError, match=r"NUM_CLASSES \(17\) <= EMBED_DIM \(16\)"):
        tc.orthogonal_class_embedding(17, 16)


def test_classifier_with_void_appends_the_normalised_void_row():
    rows = F.normalize(torch.randn(4, 8), dim=-1)
    void = torch.randn(1, 8) * 3
    classifier = tc.classifier_with_void(rows, void)
    assert torch.equal(classifier[:4], rows)
    torch.testing.assert_close(classifier[4], void[0] / void.norm())
    with pytest.raises(ValueError, match=r"void embedding must be \[1, 8\]"):
        tc.classifier_with_void(rows, torch.randn(1, 9))


def tiny_text_cfg(dataset, **clip_head):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
    cfg.MODEL.CLIP_HEAD.EMBED_DIM = 64
    cfg.MODEL.CLIP_HEAD.PROMPT_TEMPLATES = "single"
    for key, value in clip_head.items():
        setattr(cfg.MODEL.CLIP_HEAD, key, value)
    return cfg


def test_text_classifier_from_config_is_computed_once_per_clip_weights(backbone, tmp_path, monkeypatch):
    dataset = register_metadata(stuff_classes=["square", "circle"])
    classifier = tc.TextClassifier(tiny_text_cfg(dataset, CACHE_DIR=str(tmp_path)))
    calls = count_encodings(monkeypatch)
    rows, num_synonyms = classifier(backbone)
    assert rows.shape == (2, 64) and num_synonyms == [1, 1]
    assert classifier(backbone)[0] is rows and len(calls) == 1
    backbone.clip_weights_version += 1  # what loading new CLIP weights does
    assert classifier(backbone)[0] is rows  # same weights: served by the process cache
    assert calls == [[["square"], ["circle"]]]


def test_text_classifier_orthogonal_and_config_errors(backbone):
    dataset = register_metadata(stuff_classes=["square", "circle"])
    rows, num_synonyms = tc.TextClassifier(tiny_text_cfg(dataset, CLASS_EMBEDDING="orthogonal"))(backbone)
    assert rows.shape == (2, 64) and num_synonyms == [1, 1]
    with pytest.raises(ValueError, match="CLASS_EMBEDDING='random'"):
        tc.TextClassifier(tiny_text_cfg(dataset, CLASS_EMBEDDING="random"))
    with pytest.raises(ValueError, match="EMBED_DIM=640 .* 64-d"):
        tc.TextClassifier(tiny_text_cfg(dataset, EMBED_DIM=640))(backbone)
    cfg = tiny_text_cfg(dataset)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    with pytest.raises(ValueError, match="NUM_CLASSES=3"):
        tc.TextClassifier(cfg)


def test_ade20k_classifier_with_the_tiny_text_tower(backbone, tmp_path):
    """The full ADE20K prompt set (403 synonyms x 14 templates), encoded by the tiny text tower."""
    dataset = register_metadata(prompt_file="ade20k_150",
                                stuff_dataset_id_to_contiguous_id={i: i for i in range(150)})
    cfg = tiny_text_cfg(dataset, PROMPT_TEMPLATES="vild", CACHE_DIR=str(tmp_path))
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 150
    rows, num_synonyms = tc.TextClassifier(cfg)(backbone)
    assert rows.shape == (403, 64) and len(num_synonyms) == 150 and sum(num_synonyms) == 403
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(403))
    # Both "kitchen range" rows of the stove class (contiguous id 71) are the same embedding.
    stove = sum(num_synonyms[:71])
    torch.testing.assert_close(rows[stove + 2], rows[stove + 3])
