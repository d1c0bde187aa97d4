"""LoRA fine-tuning of the answering model on domain data, closing the loop into the app.

``python -m finetune train configs/finetune/X.yaml [key=value ...]`` reads alpaca / sharegpt / dataset_info.json
data (plus AdvertiseGen, counselling and the app's feedback), trains a LoRA with the chat template code the app
serves with, and registers ``adapters/<name>/`` (peft safetensors + ``rag_adapter.json``), which the app lists at once.
Also ``eval`` (BLEU-4 / ROUGE-1/2/L), ``merge``, ``infer`` (base vs adapter), ``convert-data`` and
``make-tiny-model``. Modules: config, formats + data, templates, train (the recipe) + trainer + reports, packing,
evaluate, merge, infer, tiny.
Importing the package loads no model library.
"""
