//! The OSS documentation's C# resumable-download sample, in Rust with ossmount's engine.
//!
//! Credentials come from OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET; everything else has the
//! sample's values and can be overridden from the environment (OSS_ENDPOINT, OSS_REGION,
//! OSS_BUCKET, OSS_OBJECT, LOCAL_FILE) so it also runs against `ossmount serve`.

use std::sync::Arc;

use ossmount::hydrate::download::{resumable_download, DownloadError, DownloadRequest};
use ossmount::oss::{ClientConfig, Credentials, Endpoint, OssClient, Secret};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() {
    // Set the endpoint for the region where your bucket is located.
    let endpoint = env_or("OSS_ENDPOINT", "https://oss-cn-hangzhou.aliyuncs.com");
    // Read credentials from environment variables.
    let access_key_id = std::env::var("OSS_ACCESS_KEY_ID").unwrap_or_default();
    let access_key_secret = std::env::var("OSS_ACCESS_KEY_SECRET").unwrap_or_default();
    // Specify the bucket name and object path.
    let bucket_name = env_or("OSS_BUCKET", "examplebucket");
    let object_name = env_or("OSS_OBJECT", "exampleobject.txt");
    // The local file: overwritten only once the download is complete and verified.
    let download_filename = env_or("LOCAL_FILE", "examplefile.txt");
    // The checkpoint file: deleted after a successful download.
    let checkpoint_dir = format!("{download_filename}.dcp");
    let region = env_or("OSS_REGION", "cn-hangzhou");

    let mut conf = match Endpoint::parse(&endpoint) {
        Ok(e) => ClientConfig::new(e),
        Err(e) => {
            println!("Failed with error info: {e}");
            std::process::exit(1);
        }
    };
    conf.region = Some(region);
    conf.credentials = Some(Credentials {
        access_key_id,
        access_key_secret: Secret::new(access_key_secret),
        security_token: std::env::var("OSS_SESSION_TOKEN").ok().map(Secret::new),
    });
    let client = match OssClient::new(conf) {
        Ok(c) => c,
        Err(e) => {
            println!("Failed with error info: {e}");
            std::process::exit(1);
        }
    };

    let mut request = DownloadRequest::new(&bucket_name, &object_name, &download_filename);
    // Part size in bytes (8 MiB).
    request.part_size = 8 * 1024 * 1024;
    // Number of concurrent download threads.
    request.threads = 3;
    // Checkpoint file path; None disables resumable download.
    request.checkpoint = Some(checkpoint_dir.into());

    match resumable_download(Arc::new(client), &request, |_| {}).await {
        Ok(_) => println!("Resumable download object:{object_name} succeeded"),
        Err(e) => {
            // Service errors print the way the SDK samples do (code, message, RequestID).
            match e.store_error() {
                Some(s) => println!("{s}"),
                None => println!("Failed with error info: {e}"),
            }
            std::process::exit(match e {
                DownloadError::Invalid(_) => 2,
                _ => 1,
            });
        }
    }
}
