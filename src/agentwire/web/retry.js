// The page's one reconnect and retry policy (DESIGN §10): ~250 ms doubling to a 15 s cap, ±20 %
// jitter, forever, reset once a connection opens. `Net` reconnects its transport with a `Backoff`
// (the status indicator shows each attempt); a load that must succeed goes through `retry`.

export class Backoff {
  constructor({ base = 250, factor = 2, cap = 15000, jitter = 0.2, random = Math.random } = {}) {
    Object.assign(this, { base, factor, cap, jitter, random });
    this.attempt = 0;
  }

  next() {
    const raw = Math.min(this.cap, this.base * this.factor ** this.attempt);
    this.attempt += 1;
    return Math.round(raw * (1 + this.jitter * (2 * this.random() - 1)));
  }

  reset() {
    this.attempt = 0;
  }
}

// Run `attempt` until it resolves, and resolve with its value; after each failure wait the backoff's
// next delay. After `tries` failures the last error is thrown; once `wanted()` says the result no
// longer matters (the page moved on), resolve with undefined instead of trying again.
export async function retry(attempt, { backoff = new Backoff(), tries = Infinity, wanted = () => true } = {}) {
  for (let failures = 0; wanted();) {
    try {
      return await attempt();
    } catch (error) {
      failures += 1;
      if (failures >= tries) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, backoff.next()));
  }
  return undefined;
}
