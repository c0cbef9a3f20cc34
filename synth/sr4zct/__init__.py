"""SR4ZCT (Shi, Pelt & Batenburg 2023): self-supervised through-plane enhancement trained on a series'
own axial images. `degrade` (F↓, F↑), `pairs`, `net`, `fit`, `infer`, `weights`, `backend`."""
