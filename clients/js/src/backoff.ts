// Reconnect delays: exponential ceilings with full jitter (a uniformly random delay up to the
// ceiling), so that clients a server dropped together do not come back together.

/** How the client reconnects after a connection ends. */
export interface ReconnectOptions {
  /** Reconnect at all. Default `true`. */
  enabled?: boolean;
  /** The first ceiling, in ms; it doubles per failed attempt. Default 250. */
  initialDelay?: number;
  /** The largest ceiling, in ms. Default 10000. */
  maxDelay?: number;
  /**
   * Failed attempts in a row before giving up (`closed`). Default: no limit once a session was
   * open; the first connection is tried once.
   */
  maxAttempts?: number | null;
}

export interface Backoff {
  enabled: boolean;
  initialDelay: number;
  maxDelay: number;
  maxAttempts: number | null;
}

export function backoff(options: ReconnectOptions | undefined): Backoff {
  return {
    enabled: options?.enabled ?? true,
    initialDelay: Math.max(0, options?.initialDelay ?? 250),
    maxDelay: Math.max(0, options?.maxDelay ?? 10_000),
    maxAttempts: options?.maxAttempts ?? null,
  };
}

/** The ceiling after `failures` failed attempts. */
export function ceiling(b: Backoff, failures: number): number {
  return Math.min(b.maxDelay, b.initialDelay * 2 ** Math.min(failures, 30));
}

/** A delay drawn uniformly from [0, ceiling]. */
export function delay(b: Backoff, failures: number, random: () => number = Math.random): number {
  return Math.floor(random() * (ceiling(b, failures) + 1));
}

/** Close codes after which the same attempt would fail again (1008, 4000, 4001, 4003). */
export function shouldReconnect(code: number): boolean {
  return ![1008, 4000, 4001, 4003].includes(code);
}
