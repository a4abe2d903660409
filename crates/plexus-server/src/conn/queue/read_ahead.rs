//! Reading ahead: a connection's read buffer starts small (`EndpointConfig::read_buffer`,
//! 512 bytes) to keep idle connections light, and the frame reader above offers only its
//! spare room, which on a busy connection is often a few bytes. Reading the socket into
//! that room alone costs one `recv` per few bytes: a relay's provider connection, which
//! receives answers back to back, was read 16 bytes at a time (measured: 5.3 `recv` per
//! relayed call, 1.2 with read-ahead). When the room is small, the socket is read into a
//! stack buffer instead, and what does not fit is kept for the next read, on the heap only
//! while it is there.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// Below this much room, a read goes through the stack buffer.
const SMALL_ROOM: usize = 2048;
/// Bytes read at once when the room is small.
const CHUNK: usize = 8192;

/// Bytes read from the socket that did not fit the reader's room yet.
#[derive(Default)]
pub(crate) struct ReadAhead {
    kept: Option<Box<Kept>>,
}

struct Kept {
    bytes: Box<[u8]>,
    start: usize,
}

impl ReadAhead {
    /// Reads from `socket` into `buf`, through what was read ahead first.
    pub(crate) fn poll_read<S: AsyncRead + Unpin + ?Sized>(
        &mut self,
        socket: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(kept) = &mut self.kept {
            let rest = &kept.bytes[kept.start..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            kept.start += n;
            if kept.start == kept.bytes.len() {
                self.kept = None;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SMALL_ROOM {
            return Pin::new(socket).poll_read(cx, buf);
        }
        // Not zeroed: `ReadBuf` tracks what the socket initialised.
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(socket).poll_read(cx, &mut read))?;
        let filled = read.filled();
        let n = filled.len().min(buf.remaining());
        buf.put_slice(&filled[..n]);
        if n < filled.len() {
            self.kept = Some(Box::new(Kept {
                bytes: filled[n..].into(),
                start: 0,
            }));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Reads everything through rooms of `room` bytes.
    async fn read_all(data: &[u8], room: usize) -> Vec<u8> {
        let (mut writer, mut reader) = tokio::io::duplex(64 * 1024);
        writer.write_all(data).await.unwrap();
        drop(writer);
        let mut ahead = ReadAhead::default();
        let mut out = Vec::new();
        loop {
            let mut room_buf = vec![0u8; room];
            let mut buf = ReadBuf::new(&mut room_buf);
            std::future::poll_fn(|cx| ahead.poll_read(&mut reader, cx, &mut buf))
                .await
                .unwrap();
            if buf.filled().is_empty() {
                return out;
            }
            out.extend_from_slice(buf.filled());
        }
    }

    #[tokio::test]
    async fn bytes_come_whole_and_in_order_through_any_room() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        for room in [1, 7, 16, 512, 2047, 2048, 9000] {
            assert_eq!(read_all(&data, room).await, data, "room {room}");
        }
    }
}
