//! A TCP link between two processes that the chaos suite can break: cut (every connection
//! closed, new ones refused: a partition), slowed (each chunk held back) and made lossy (a
//! connection reset now and then, which is what loss costs a TCP stream). Real sockets, for
//! machines where network namespaces and tc netem are not available.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

#[derive(Default)]
struct Faults {
    cut: AtomicBool,
    delay_ms: AtomicU64,
    /// Chance per forwarded chunk that the connection is reset, per mille.
    reset_per_mille: AtomicU32,
    /// Connections reset by `reset_per_mille`, for the run's figures.
    resets: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
}

pub struct ChaosLink {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
}

impl ChaosLink {
    /// Listens on an ephemeral loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("link binds");
        let addr = listener.local_addr().expect("link address");
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if shared.cut.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target) else {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                if let (Ok(a), Ok(b)) = (inbound.try_clone(), outbound.try_clone()) {
                    let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
                    open.retain(|s| s.peer_addr().is_ok());
                    open.extend([a, b]);
                }
                pump(inbound.try_clone(), outbound.try_clone(), shared.clone());
                pump(Ok(outbound), Ok(inbound), shared.clone());
            }
        });
        Self { addr, faults }
    }

    /// Cut: every open connection is closed and new ones are refused until healed.
    pub fn set_cut(&self, cut: bool) {
        self.faults.cut.store(cut, Ordering::SeqCst);
        if cut {
            self.close_all();
        }
    }

    pub fn set_delay(&self, delay: Duration) {
        self.faults
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_reset_per_mille(&self, per_mille: u32) {
        self.faults.reset_per_mille.store(per_mille, Ordering::SeqCst);
    }

    pub fn resets(&self) -> u64 {
        self.faults.resets.load(Ordering::SeqCst)
    }

    fn close_all(&self) {
        let mut open = self.faults.open.lock().unwrap_or_else(|p| p.into_inner());
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for ChaosLink {
    fn drop(&mut self) {
        self.set_cut(true);
    }
}

/// Copies `from` to `to` chunk by chunk, applying the link's faults to each.
fn pump(from: std::io::Result<TcpStream>, to: std::io::Result<TcpStream>, faults: Arc<Faults>) {
    let (Ok(mut reader), Ok(mut writer)) = (from, to) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        // Cheap per-connection randomness: which chunk resets does not need to be replayable,
        // the schedule that sets the rate is.
        let mut state = u64::from(reader.peer_addr().map(|a| a.port()).unwrap_or(1)) | 1;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if faults.cut.load(Ordering::SeqCst) {
                break;
            }
            let delay = faults.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                thread::sleep(Duration::from_millis(delay));
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let reset = faults.reset_per_mille.load(Ordering::SeqCst);
            if reset > 0 && state % 1000 < u64::from(reset) {
                faults.resets.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if writer.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = reader.shutdown(Shutdown::Both);
        let _ = writer.shutdown(Shutdown::Both);
    });
}
