"""LoRA fine-tuning of the answering model on domain data (alpaca / sharegpt / dataset_info.json).

Not implemented yet: this package is the home of the finetune recipe (see the project's finetune issue).
"""
