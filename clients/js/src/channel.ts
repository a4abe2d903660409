// A channel the client joined: its events as an async iterator, its position, and what the
// client needs to join it again after a reconnect (recovering what was missed) or after the
// reader fell behind.

import type { PlexusError } from "./errors.js";
import type { Position } from "./frames.js";

/** A member of a channel's presence. */
export interface Member {
  user: string | null;
  conn: string;
  info: unknown;
}

/** What a subscription delivers. */
export type ChannelEvent =
  | { type: "publication"; offset: number; data: unknown }
  | { type: "join"; member: Member }
  | { type: "leave"; member: Member }
  /**
   * Joined from a position (after a reconnect, a lag, the server's `left` UNAVAILABLE, or a
   * first join with `since`). With `recovered: false` publications were missed and the
   * history could not cover them: reload the state from its source of truth.
   */
  | { type: "resubscribed"; recovered: boolean; position: Position }
  /** The subscription ended: left, or ended by the server (`error` says why, if it did). */
  | { type: "closed"; error?: PlexusError };

/** How to join a channel. */
export interface JoinOptions {
  /** Recover the publications after this position (from an earlier session). */
  since?: Position;
  /** A delivery filter, as the server's application defines it. */
  filter?: unknown;
}

/** What the client does for a subscription. */
export interface ChannelLink {
  /** Join again from the last position (the reader caught up after lagging). */
  rejoin(): void;
  /** Leave the channel. */
  leave(): Promise<void>;
}

/** A channel subscription. Iterate its events with `for await`. */
export class Subscription implements AsyncIterableIterator<ChannelEvent> {
  readonly channel: string;
  /** The last position delivered (or joined at): where a later join recovers from. */
  position: Position | undefined;
  /** @internal */ readonly filter: unknown;
  /** @internal */ lagging = false;
  /** @internal */ joining = false;
  /** @internal The id of the join in flight: answers to any other are stale. */
  joinId = 0;
  /** @internal Settles the application's `join()` once, at the first answer. */
  onFirst: ((error?: PlexusError) => void) | undefined;
  /** @internal Re-joins refused for a while (`UNAVAILABLE`, `RATE_LIMITED`), in a row. */
  retries = 0;
  /** @internal The next re-join, when one was refused for a while. */
  retryTimer: ReturnType<typeof setTimeout> | undefined;
  #events: ChannelEvent[] = [];
  #closed = false;
  #waiter: ((r: IteratorResult<ChannelEvent>) => void) | undefined;
  readonly #capacity: number;
  readonly #link: ChannelLink;

  /** @internal */
  constructor(channel: string, options: JoinOptions, capacity: number, link: ChannelLink) {
    this.channel = channel;
    this.position = options.since;
    this.filter = options.filter;
    this.#capacity = Math.max(1, capacity);
    this.#link = link;
  }

  /** @internal A publication at `offset`; duplicates (already delivered) are dropped. */
  publication(offset: number, data: unknown): void {
    if (this.position && offset <= this.position.offset) return;
    if (this.lagging || this.#events.length >= this.#capacity) {
      // Not delivered and not counted: joining again from `position` recovers it.
      this.lagging = true;
      return;
    }
    if (this.position) this.position = { epoch: this.position.epoch, offset };
    this.#emit({ type: "publication", offset, data });
  }

  /** @internal A presence event; dropped when the reader is too far behind. */
  presence(event: "join" | "leave", member: Member): void {
    if (!this.lagging && this.#events.length < this.#capacity) this.#emit({ type: event, member });
  }

  /** @internal Joined: at `position`, having asked to recover from `since`. */
  joined(position: Position, recovered: boolean, since: Position | undefined): void {
    this.joining = false;
    this.lagging = false;
    this.retries = 0;
    if (since && recovered) {
      // What was missed follows as `msg` (offsets up to `position.offset`); never back
      // over what was delivered meanwhile.
      const delivered = this.position?.epoch === position.epoch ? this.position.offset : 0;
      this.position = { epoch: position.epoch, offset: Math.max(since.offset, delivered) };
    } else {
      this.position = position;
    }
    if (since) this.#emit({ type: "resubscribed", recovered, position });
  }

  /** @internal The subscription ended. */
  close(error?: PlexusError): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.retryTimer);
    this.#emit(error ? { type: "closed", error } : { type: "closed" });
  }

  get closed(): boolean {
    return this.#closed;
  }

  next(): Promise<IteratorResult<ChannelEvent>> {
    const event = this.#events.shift();
    if (event) {
      if (this.#events.length === 0 && this.lagging && !this.joining) this.#link.rejoin();
      if (event.type === "closed") this.#events = [];
      return Promise.resolve({ value: event, done: false });
    }
    if (this.#closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.#waiter = resolve;
    });
  }

  /** Leaves the channel. */
  async return(): Promise<IteratorResult<ChannelEvent>> {
    await this.leave();
    return { value: undefined, done: true };
  }

  /** Leaves the channel: no publication of it is delivered after this resolves. */
  async leave(): Promise<void> {
    if (this.#closed) return;
    await this.#link.leave();
    this.close();
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<ChannelEvent> {
    return this;
  }

  #emit(event: ChannelEvent): void {
    if (this.#waiter) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      waiter({ value: event, done: false });
      if (this.lagging && !this.joining && this.#events.length === 0) this.#link.rejoin();
    } else {
      this.#events.push(event);
    }
  }
}
