//! The seam between the download engine and the network: `ObjectStore` is what the engine and
//! the filesystem need from object storage (HEAD, a ranged GET as a byte stream, one listing
//! page). `OssClient` implements it; tests can put any other store behind it.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use crate::oss::{ListPage, ListRequest, ObjectMeta, OssClient, OssError};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, OssError>> + Send>>;

pub trait ObjectStore: Send + Sync + 'static {
    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<ObjectMeta, OssError>>;

    /// The bytes `[range.start, range.end)`, pinned to `if_match` when given. The stream ends
    /// after exactly `range.end - range.start` bytes or yields an error.
    fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<String>,
    ) -> ByteStream;

    fn list_page<'a>(
        &'a self,
        bucket: &'a str,
        req: ListRequest,
    ) -> BoxFut<'a, Result<ListPage, OssError>>;

    /// Where the objects come from (endpoint), to tell caches of different stores apart.
    fn location(&self) -> String;
}

/// Every page of a listing, concatenated. A truncated page without a continuation token is
/// an error rather than a silently short listing.
pub async fn list_all(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
) -> Result<ListPage, OssError> {
    let mut all = ListPage::default();
    let mut token = None;
    loop {
        let page = store
            .list_page(
                bucket,
                ListRequest {
                    prefix: prefix.to_string(),
                    delimiter: delimiter.map(str::to_string),
                    max_keys: Some(1000),
                    continuation_token: token.take(),
                    start_after: None,
                },
            )
            .await?;
        all.objects.extend(page.objects);
        all.common_prefixes.extend(page.common_prefixes);
        match (page.is_truncated, page.next_continuation_token) {
            (true, Some(t)) => token = Some(t),
            (true, None) => {
                return Err(OssError::Protocol {
                    endpoint: store.location(),
                    detail: "listing is truncated but has no NextContinuationToken".into(),
                })
            }
            _ => return Ok(all),
        }
    }
}

impl ObjectStore for OssClient {
    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<ObjectMeta, OssError>> {
        Box::pin(self.head_object(bucket, key))
    }

    fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<String>,
    ) -> ByteStream {
        let reader = self.get_object(bucket, key, Some(range), if_match);
        Box::pin(futures_util::stream::unfold(reader, |mut r| async move {
            match r.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), r)),
                Ok(None) => None,
                // After an error the reader is spent: end the stream behind it.
                Err(e) => Some((Err(e), r.finished())),
            }
        }))
    }

    fn list_page<'a>(
        &'a self,
        bucket: &'a str,
        req: ListRequest,
    ) -> BoxFut<'a, Result<ListPage, OssError>> {
        Box::pin(async move { self.list_objects_v2(bucket, &req).await })
    }

    fn location(&self) -> String {
        self.config().endpoint.to_string()
    }
}
