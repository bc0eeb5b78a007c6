"""The loop of pytorch/examples dcgan/main.py: a generator and a discriminator, each with its own
Adam, the discriminator stepped on real and fake batches, then the generator (small MLPs on
synthetic 16-dimensional data)."""

import torch
from torch import nn

torch.manual_seed(2)
netG = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh())
netD = nn.Sequential(nn.Linear(16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1), nn.Sigmoid())
criterion = nn.BCELoss()
optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
real_data = torch.tanh(torch.randn(640, 16))
for i in range(20):
    real = real_data[32 * i:32 * (i + 1)]
    netD.zero_grad()
    errD_real = criterion(netD(real), torch.ones(32, 1))
    errD_real.backward()
    fake = netG(torch.randn(32, 8))
    errD_fake = criterion(netD(fake.detach()), torch.zeros(32, 1))
    errD_fake.backward()
    optimizerD.step()
    netG.zero_grad()
    errG = criterion(netD(fake), torch.ones(32, 1))
    errG.backward()
    optimizerG.step()
