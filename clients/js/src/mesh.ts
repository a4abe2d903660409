// The relay mesh from a client (PROTOCOL.md §12): the live providers (`$services`), their
// changes (`$watch`), and waiting until a service has one.

import type { Client } from "./client.js";
import { PlexusError } from "./errors.js";

/** A provider as `$services` and `$watch` show it. */
export interface ProviderInfo {
  node: string;
  services: string[];
}

/** An item of `$watch`: the providers now (first), then each change. */
export type ServiceWatchItem =
  | ProviderInfo[]
  | { online: ProviderInfo }
  | { offline: { node: string } };

/**
 * Resolves once some provider serves `service` (at once if one does), or rejects with
 * `TIMEOUT` after `timeout` ms (default: the client's call timeout) or `CANCELLED` when
 * `signal` aborts. A watch lost with its connection is watched again after the reconnect.
 */
export async function waitForService(
  client: Client,
  service: string,
  options: { timeout?: number; signal?: AbortSignal } = {},
): Promise<void> {
  const deadline = new AbortController();
  const timeout = options.timeout ?? 30_000;
  const timer = setTimeout(() => deadline.abort(), timeout);
  const onAbort = () => deadline.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    while (!deadline.signal.aborted) {
      try {
        const providers = new Map<string, string[]>();
        for await (const item of client.stream<ServiceWatchItem>("$watch", null, { signal: deadline.signal })) {
          if (Array.isArray(item)) for (const p of item) providers.set(p.node, p.services);
          else if ("online" in item) providers.set(item.online.node, item.online.services);
          else providers.delete(item.offline.node);
          if ([...providers.values()].some((services) => services.includes(service))) return;
        }
      } catch (error) {
        if (!(error instanceof PlexusError) || deadline.signal.aborted) break;
        if (error.code !== "UNAVAILABLE") throw error;
        // The watch went with its connection, or fell behind: watch again once connected.
        await new Promise<void>((ready) => {
          if (client.status === "connected") return ready();
          const stop = client.onStatus((status) => {
            if (status === "connected" || status === "closed") {
              stop();
              ready();
            }
          });
        });
        if (client.status === "closed") throw new PlexusError("CLOSED", "the client is closed");
      }
    }
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
  if (options.signal?.aborted) throw new PlexusError("CANCELLED", "cancelled by the application");
  throw new PlexusError("TIMEOUT", `no provider of \`${service}\` within ${timeout} ms`);
}
