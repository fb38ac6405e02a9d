r"""The catapult's edge in Lewkowycz et al. 2020's uv model, with heavy-ball momentum.

The model behind dynamics.CATAPULT_EDGE: f = u·v/√n, loss ½ (f - y)², NTK λ = (|u|² + |v|²)/n,
optax's heavy ball (v <- m v + g, w <- w - η v) from u, v ~ N(0, I_n). For each m, the largest
η λ_0 at which the run still converges, by bisection above the linear limit 2 (1 + m):

  python -m experiments.catapult_uv            # about a minute of CPU

Measured (n = 4,000, y = 1, seeds 0 and 1): η λ_0 = 4.00, 4.00 at m = 0; 4.43, 4.12 at 0.25;
4.28, 4.27 at 0.5; 4.51, 4.40 at 0.75; 4.50, 4.46 at 0.9. At m = 0, 2 < η λ_0 < 4 is the
paper's catapult window, and the top eigenvalue ends below 2/η (η λ_T = 1.89 at η λ_0 = 2.1,
1.28 at 2.5).
"""

import numpy as np


def converges(x, m, *, n=4000, y=1.0, steps=4000, seed=0):
  """Whether heavy ball at η = x/λ_0 converges (loss < 1e-8 at the end); and η λ_T."""
  rng = np.random.default_rng(seed)
  u, v = rng.standard_normal(n), rng.standard_normal(n)
  eta = x * n / (u @ u + v @ v)
  bu, bv = np.zeros(n), np.zeros(n)
  for _ in range(steps):
    e = u @ v / np.sqrt(n) - y
    if not np.isfinite(e) or abs(e) > 1e6:
      return False, np.nan
    bu, bv = m * bu + e * v / np.sqrt(n), m * bv + e * u / np.sqrt(n)
    u, v = u - eta * bu, v - eta * bv
  return bool(0.5 * (u @ v / np.sqrt(n) - y) ** 2 < 1e-8), eta * (u @ u + v @ v) / n


def edge(m, seed, iters=12):
  lo, hi = 2.0 * (1.0 + m), 6.0
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if converges(mid, m, seed=seed)[0] else (lo, mid)
  return lo


def main():
  for x in (2.1, 2.5):
    print(f'm=0, eta*lam0={x}: eta*lam_T={converges(x, 0.0)[1]:.3f}')
  for m in (0.0, 0.25, 0.5, 0.75, 0.9):
    print(f'm={m}: edge eta*lam0 =', ', '.join(f'{edge(m, s):.2f}' for s in (0, 1)))


if __name__ == '__main__':
  main()
