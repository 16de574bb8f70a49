//! Frames on the uplink stream: one kind byte, a big-endian u32 length, the payload.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::UplinkError;

/// Largest report (JSON) frame accepted; sync frames are bounded by the engine's limit.
pub const MAX_CONTROL_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Hello = 1,
    Refused = 2,
    /// One `murmur-sync` message, as the engine produced it.
    Sync = 3,
    /// The agent's view of itself and its swarm neighbours (JSON), for the dashboard.
    Report = 4,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Hello,
            2 => Self::Refused,
            3 => Self::Sync,
            4 => Self::Report,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: FrameKind, payload: Vec<u8>) -> Self {
        Self { kind, payload }
    }
}

/// Reads one frame; a length over `max` or an unknown kind is an error before any payload is
/// read, so a hostile peer cannot make the reader allocate.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, max: usize) -> Result<Frame, UplinkError> {
    let mut header = [0u8; 5];
    reader.read_exact(&mut header).await?;
    let kind = FrameKind::from_byte(header[0])
        .ok_or_else(|| UplinkError::Malformed(format!("unknown frame kind {}", header[0])))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > max {
        return Err(UplinkError::Malformed(format!(
            "frame of {len} bytes exceeds {max}"
        )));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok(Frame { kind, payload })
}

/// Frames read by a task of their own, handed out through a channel: unlike [`read_frame`],
/// [`FrameReader::next`] is cancel-safe, so it can sit in a `tokio::select!` beside timers
/// and outgoing traffic. (A `read_frame` dropped half-way through a frame loses the bytes it
/// had read and leaves the stream out of step: the next "frame" starts mid-payload.) The task
/// stops at the first error, which it hands out, or when the reader is dropped.
pub struct FrameReader {
    frames: tokio::sync::mpsc::Receiver<Result<Frame, UplinkError>>,
    task: tokio::task::JoinHandle<()>,
}

impl FrameReader {
    /// Starts reading `reader` on the current runtime; frames over `max` bytes are errors.
    pub fn spawn<R: AsyncRead + Unpin + Send + 'static>(mut reader: R, max: usize) -> Self {
        // A few frames of read-ahead; a slow consumer stops the reads (QUIC flow control then
        // holds the sender back).
        let (sender, frames) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(async move {
            loop {
                let result = read_frame(&mut reader, max).await;
                let failed = result.is_err();
                if sender.send(result).await.is_err() || failed {
                    return;
                }
            }
        });
        Self { frames, task }
    }

    /// The next frame; `None` once the reading task has stopped after handing out its error.
    pub async fn next(&mut self) -> Option<Result<Frame, UplinkError>> {
        self.frames.recv().await
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> Result<(), UplinkError> {
    let len =
        u32::try_from(frame.payload.len()).map_err(|_| UplinkError::Malformed("frame over 4 GiB".into()))?;
    let mut header = [0u8; 5];
    header[0] = frame.kind as u8;
    header[1..].copy_from_slice(&len.to_be_bytes());
    writer.write_all(&header).await?;
    writer.write_all(&frame.payload).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large frames arriving in small pieces, read inside a `select!` whose timer fires between
    /// the pieces: every frame arrives whole and in order. (With `read_frame` in the `select!`,
    /// the first timer tick mid-frame desynchronises the stream.)
    #[tokio::test]
    async fn the_frame_reader_survives_select_cancellation() {
        let (mut writer, reader) = tokio::io::duplex(1024);
        let frames: Vec<Frame> = (0..5u8)
            .map(|i| Frame::new(FrameKind::Sync, vec![i; 50_000 + usize::from(i)]))
            .collect();
        let sent = frames.clone();
        tokio::spawn(async move {
            for frame in &sent {
                let mut bytes = Vec::new();
                write_frame(&mut bytes, frame).await.unwrap();
                for piece in bytes.chunks(700) {
                    writer.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut frame_reader = FrameReader::spawn(reader, 1 << 20);
        let mut received = Vec::new();
        let mut ticks = 0u32;
        while received.len() < frames.len() {
            tokio::select! {
                frame = frame_reader.next() => received.push(frame.expect("open").expect("a frame")),
                _ = tokio::task::yield_now() => ticks += 1,
            }
        }
        assert_eq!(received, frames);
        assert!(ticks > 0, "the other branch never ran, so nothing was cancelled");
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_headers_are_refused() {
        let mut buffer = Vec::new();
        let frame = Frame::new(FrameKind::Sync, b"abc".to_vec());
        write_frame(&mut buffer, &frame).await.unwrap();
        assert_eq!(read_frame(&mut buffer.as_slice(), 16).await.unwrap(), frame);
        assert!(matches!(
            read_frame(&mut buffer.as_slice(), 2).await,
            Err(UplinkError::Malformed(_))
        ));
        let mut unknown = buffer.clone();
        unknown[0] = 9;
        assert!(matches!(
            read_frame(&mut unknown.as_slice(), 16).await,
            Err(UplinkError::Malformed(_))
        ));
        assert!(matches!(
            read_frame(&mut &buffer[..6], 16).await,
            Err(UplinkError::Io(_))
        ));
    }
}
