"""A character-level LSTM language model on text from a random Markov chain, with SGD at a learning
rate just above what it trains stably at without clipping (the word-language-model recipe's regime).

SGD 8.0, 300 steps; prints the validation cross-entropy (nats per character)."""

import torch

vocab, length = 24, 32
generator = torch.Generator().manual_seed(1234)  # the language itself is fixed; the model and data vary
transitions = torch.softmax(3.0 * torch.randn(vocab, vocab, generator=generator), 1)


def text(n):
    chars = torch.empty(n, length + 1, dtype=torch.long)
    chars[:, 0] = torch.randint(0, vocab, (n,))
    for t in range(length):
        chars[:, t + 1] = torch.multinomial(transitions[chars[:, t]], 1).squeeze(1)
    return chars[:, :-1], chars[:, 1:]


class CharLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 32)
        self.lstm = torch.nn.LSTM(32, 128, batch_first=True)
        self.out = torch.nn.Linear(128, vocab)

    def forward(self, chars):
        hidden, _ = self.lstm(self.embed(chars))
        return self.out(hidden)


model = CharLM()
opt = torch.optim.SGD(model.parameters(), lr=8.0)
x_val, y_val = text(256)
for step in range(300):
    x, y = text(32)
    loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    val = torch.nn.functional.cross_entropy(model(x_val).reshape(-1, vocab), y_val.reshape(-1))
    print(f"val_metric={val.item():.6g}")
