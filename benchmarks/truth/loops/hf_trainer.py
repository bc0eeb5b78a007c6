"""A Hugging Face ``Trainer`` script: a model whose ``forward`` returns ``{"loss": ...}``, a ``Dataset``,
``TrainingArguments`` with ``gradient_accumulation_steps=2``, AdamW and the linear schedule the Trainer
builds (``max_grad_norm=0``: the Trainer does not clip; synthetic classification)."""

import tempfile

import torch
from transformers import Trainer, TrainingArguments

torch.manual_seed(8)


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(12, 48), torch.nn.ReLU())
        self.head = torch.nn.Linear(48, 3)

    def forward(self, features, labels=None):
        logits = self.head(self.body(features))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class Data(torch.utils.data.Dataset):
    def __init__(self, n=320):
        self.x = torch.randn(n, 12)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "labels": self.y[i]}


with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=16, gradient_accumulation_steps=2,
                             max_steps=10, learning_rate=5e-3, max_grad_norm=0.0, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    Trainer(model=Classifier(), args=args, train_dataset=Data()).train()
