"""configs/shapes/tiny_dear_clip.yaml: the tiny semi-supervised run on the CLIP pretrained here."""
import torch
from helpers.engine_setup import train
from helpers.tiny import tiny_cfg
from safetensors.torch import load_file

from dearli.modeling.backbone.weight_manifest import verify_weights_file


def test_trains_with_the_pretrained_clip_and_the_text_classifier(tmp_path):
    cfg = tiny_cfg("tiny_dear_clip", **{"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 1000,
                                        "DATASETS.TEST": [], "OUTPUT_DIR": str(tmp_path)})
    assert cfg.SSL.ENABLED and cfg.MODEL.CLIP_HEAD.ENSEMBLE_ALPHA == 0.4
    manifest = verify_weights_file(cfg.MODEL.OPEN_CLIP.PRETRAINED, cfg.MODEL.OPEN_CLIP.MODEL_NAME)
    assert manifest is not None
    trainer = train(cfg)
    assert trainer.iter == 2  # TrainerBase.train leaves iter at max_iter after the loop
    model = trainer.model
    # the frozen CLIP holds exactly the committed weights, before and after training
    stored = load_file(cfg.MODEL.OPEN_CLIP.PRETRAINED)
    clip_state = model.backbone.clip_model.state_dict()
    for name in ("token_embedding.weight", "visual.trunk.stem.0.weight", "logit_scale"):
        assert torch.equal(clip_state[name], stored[name].float()), name
    # the class side is the text classifier of the shapes synonyms (9 classes, 15 synonyms)
    rows, num_synonyms = model.text_classifier(model.backbone)
    assert model.text_classifier.embedding == "text"
    assert num_synonyms == [2, 2, 1, 1, 2, 1, 2, 2, 2] and rows.shape == (15, 64)
    assert torch.allclose(rows.norm(dim=-1), torch.ones(15), atol=1e-5)
