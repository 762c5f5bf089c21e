//! A network partition between one client and a server: a TCP proxy on loopback that a test
//! can cut. Once cut, it forwards nothing more but keeps every connection open and accepts new
//! ones, so the client's requests hang as they do when packets are dropped.

use std::{net::SocketAddr, sync::Mutex};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// The proxy; dropping it closes every connection.
#[derive(Debug)]
pub struct Partition {
    address: SocketAddr,
    cut: watch::Sender<bool>,
    tasks: std::sync::Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Partition {
    /// Forwards a loopback port to `target` until [`Partition::cut`].
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (cut, watching) = watch::channel(false);
        let tasks = std::sync::Arc::new(Mutex::new(Vec::new()));
        let accepting = tokio::spawn({
            let tasks = tasks.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let connection = tokio::spawn(forward(client, target, watching.clone()));
                    if let Ok(mut tasks) = tasks.lock() {
                        tasks.push(connection);
                    }
                }
            }
        });
        if let Ok(mut list) = tasks.lock() {
            list.push(accepting);
        }
        Ok(Self {
            address,
            cut,
            tasks,
        })
    }

    /// The proxy's address: point the client here.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// From now on nothing gets through, in either direction.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for task in tasks.iter() {
                task.abort();
            }
        }
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    if *cut.borrow() {
        // Accepted, never answered.
        std::future::pending::<()>().await;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let was_cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        cut = cut.wait_for(|cut| *cut) => cut.is_ok(),
    };
    if was_cut {
        // Both sockets stay open, silent.
        std::future::pending::<()>().await;
    }
}
