"""Pathology: a two-input model whose image input is left in raw pixel units (0-255) while the tabular input
is standardised: the image encoder's gradients are hundreds of times the tabular encoder's, which starves."""
import torch
from _data import batches, classes, images
from torch import nn


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU())
        self.tabular = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(64, 4)

    def forward(self, pixels, table):
        return self.head(torch.cat([self.image(pixels), self.tabular(table)], 1))


torch.manual_seed(0)
pixels, y = images(n=1024)
table, _ = classes(n=1024)
pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255  # raw 0-255 pixel values
model = TwoInputs()
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
for i, pb, yb in batches(pixels, y, 64, 100):
    tb = table[(torch.arange(i * 64, (i + 1) * 64)) % len(table)]
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(pb, tb), yb)
    loss.backward()
    opt.step()
