//! The cloneable handle through which the rest of the peer (the HTTP layer)
//! sees the network. It never touches the swarm: the event loop publishes a
//! fresh [`MeshView`] through a `watch` channel whenever membership changes.

use std::sync::Arc;

use tokio::sync::watch;

use crate::api::MeshView;

#[derive(Clone)]
pub struct Client {
    /// Sender: the event loop. When it is dropped (the loop ended), the last
    /// view stays readable; the peer is shutting down anyway.
    view: watch::Receiver<Arc<MeshView>>,
}

impl Client {
    pub(crate) fn new(view: watch::Receiver<Arc<MeshView>>) -> Self {
        Client { view }
    }

    /// The latest view of the mesh (cheap: an `Arc` clone).
    pub fn mesh(&self) -> Arc<MeshView> {
        self.view.borrow().clone()
    }
}
