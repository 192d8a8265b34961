from conftest import classification_config, causal_config
import finetune
from finetune import FinetuneConfig

def test_cls(tiny_bert, sentiment_files, tmp_path):
    cfg = FinetuneConfig.from_dict(classification_config(tiny_bert, sentiment_files, tmp_path / "run"))
    r = finetune.train(cfg)
    print(r.to_json())
    m = finetune.evaluate(tmp_path / "run", "validation")
    print(m)

def test_lm(tiny_llama, sft_files, tmp_path):
    cfg = FinetuneConfig.from_dict(causal_config(tiny_llama, sft_files["messages"], tmp_path / "run"))
    r = finetune.train(cfg)
    print(r.to_json())
    print(finetune.evaluate(tmp_path / "run", "validation"))
