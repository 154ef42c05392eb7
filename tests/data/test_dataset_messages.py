"""A missing CamVid folder names DEARLI_CAMVID, the variable that points to it."""
import pytest
from detectron2.data import DatasetCatalog

from dearli.data.datasets.builtin import get_datasets_root
from dearli.data.datasets.semantic import camvid_root, register_camvid


@pytest.fixture
def builtin_camvid_restored():
    root = camvid_root(get_datasets_root())  # read before the test changes DEARLI_CAMVID
    yield
    register_camvid(root)


@pytest.mark.parametrize("name", ["camvid_val", "camvid_train", "camvid_train_1_8_labeled"])
def test_missing_camvid_names_the_variable(tmp_path, monkeypatch, name, builtin_camvid_restored):
    monkeypatch.setenv("DEARLI_CAMVID", str(tmp_path / "nowhere"))
    register_camvid(camvid_root("unused"), cache_root=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    assert message.startswith(f"label folder {tmp_path / 'nowhere'}/")
    assert message.endswith("not found; set DEARLI_CAMVID to the CamVid folder (layout {train,val}/images/*.jpg "
                            "and {train,val}/labels/*.png) or place it at $DETECTRON2_DATASETS/camvid")
