// Channels the server subscribes the connection to itself (`joined`, PROTOCOL.md §6): their
// events on one bounded stream of `{channel, event}`, duplicates dropped by offset; what does
// not fit is dropped and said with a `lagged` event.

import type { ChannelEvent, Member } from "./channel.js";
import type { PlexusError } from "./errors.js";
import type { Position } from "./frames.js";

/** What a subscription of the server's own making delivers, by channel. */
export interface ServerChannelEvent {
  channel: string;
  event:
    | ChannelEvent
    | { type: "subscribed"; position: Position; recovered: boolean }
    /** Events of the channel were dropped (the reader fell behind): reload its state. */
    | { type: "lagged" };
}

export class ServerChannels {
  readonly #positions = new Map<string, Position>();
  readonly #lagging = new Set<string>();
  #events: ServerChannelEvent[] = [];
  #waiter: ((r: IteratorResult<ServerChannelEvent>) => void) | undefined;
  #ended = false;
  readonly #capacity: number;

  constructor(capacity: number) {
    this.#capacity = Math.max(1, capacity);
  }

  has(channel: string): boolean {
    return this.#positions.has(channel);
  }

  joined(channel: string, position: Position, recovered: boolean): void {
    this.#positions.set(channel, { ...position });
    this.#lagging.delete(channel);
    this.#push({ channel, event: { type: "subscribed", position, recovered } }, true);
  }

  publication(channel: string, offset: number, data: unknown): void {
    const position = this.#positions.get(channel);
    if (!position || offset <= position.offset) return;
    position.offset = offset;
    this.#push({ channel, event: { type: "publication", offset, data } });
  }

  presence(channel: string, type: "join" | "leave", member: Member): void {
    if (this.#positions.has(channel)) this.#push({ channel, event: { type, member } });
  }

  left(channel: string, error: PlexusError | undefined): void {
    if (!this.#positions.delete(channel)) return;
    this.#lagging.delete(channel);
    this.#push({ channel, event: error ? { type: "closed", error } : { type: "closed" } }, true);
  }

  /** The connection ended: server-side subscriptions do not outlive it. */
  sessionEnded(): void {
    for (const channel of [...this.#positions.keys()]) this.left(channel, undefined);
  }

  /** The client closed. */
  end(): void {
    this.#ended = true;
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.({ value: undefined, done: true });
  }

  iterator(): AsyncIterableIterator<ServerChannelEvent> {
    const self = this;
    return {
      next(): Promise<IteratorResult<ServerChannelEvent>> {
        const event = self.#events.shift();
        if (event) {
          self.#lagging.delete(event.channel);
          return Promise.resolve({ value: event, done: false });
        }
        if (self.#ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (self.#waiter = resolve));
      },
      return(): Promise<IteratorResult<ServerChannelEvent>> {
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  /** `always`: a start or an end, kept even past the bound (one per channel at most). */
  #push(event: ServerChannelEvent, always = false): void {
    if (this.#waiter) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      waiter({ value: event, done: false });
      return;
    }
    if (always || this.#events.length < this.#capacity) {
      this.#events.push(event);
    } else if (!this.#lagging.has(event.channel)) {
      this.#lagging.add(event.channel);
      this.#events.push({ channel: event.channel, event: { type: "lagged" } });
    }
  }
}
