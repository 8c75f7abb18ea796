//! `ossmount SOURCE MOUNTPOINT -o OPTIONS`, as mount(8) and its `mount.fuse3` helper run it
//! for `mount -t fuse.ossmount` and fstab lines: turned into `ossmount mount` flags. Every
//! flag of `mount` (and the global connection flags) has an `-o` spelling with underscores
//! (`--cache-dir` → `cache_dir=`); the options mount(8) users expect (`defaults`, `_netdev`,
//! `nofail`, `ro`, `rw`, `noatime`, ...) are accepted and change nothing (the mount stays
//! read-only); anything else is an error that names it, before anything is mounted.

use clap::CommandFactory;

use super::Cli;

/// Options of mount(8), fstab and systemd that concern the caller, not ossmount.
const GENERIC: &[&str] = &[
    "defaults",
    "ro",
    "rw",
    "_netdev",
    "nofail",
    "noatime",
    "relatime",
    "atime",
    "strictatime",
    "nodiratime",
    "diratime",
    "nodev",
    "dev",
    "nosuid",
    "suid",
    "noexec",
    "exec",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "async",
    "sync",
    "dirsync",
    "lazytime",
    "nolazytime",
    "loud",
    "silent",
];

/// Whether `args` (without the program name) is a mount helper call: a source URL first.
pub fn is_helper_call(args: &[String]) -> bool {
    args.first()
        .is_some_and(|a| a.starts_with("oss://") || a.starts_with("s3://"))
}

/// `SOURCE MOUNTPOINT [-o OPTS]...` → `mount SOURCE MOUNTPOINT --flag value ...`.
pub fn translate(args: &[String]) -> Result<Vec<String>, String> {
    let (mut positional, mut options) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(
                it.next()
                    .ok_or("-o needs a list of options, e.g. -o endpoint=...,cache_dir=...")?
                    .clone(),
            ),
            o if o.starts_with("-o") => options.push(o[2..].to_string()),
            // mount(8) may pass -n (no mtab), -s (sloppy), -v (verbose): nothing to do here.
            "-n" | "-s" | "-v" | "-f" => {}
            p => positional.push(p.to_string()),
        }
    }
    let [source, mountpoint] = positional.as_slice() else {
        return Err(format!(
            "a mount helper call is SOURCE MOUNTPOINT -o OPTIONS, got {} positional arguments",
            positional.len()
        ));
    };
    let mut out = vec!["mount".to_string(), source.clone(), mountpoint.clone()];
    let cli = Cli::command();
    let mount = cli
        .find_subcommand("mount")
        .expect("the mount subcommand")
        .clone();
    let flags: Vec<(String, bool)> = cli
        .get_arguments()
        .chain(mount.get_arguments())
        .filter_map(|a| {
            let long = a.get_long()?;
            Some((long.replace('-', "_"), a.get_action().takes_values()))
        })
        .collect();
    for opt in options.iter().flat_map(|o| o.split(',')) {
        if opt.is_empty() || GENERIC.contains(&opt) || opt.starts_with("x-") {
            continue;
        }
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        if name == "comment" {
            continue;
        }
        let Some((_, takes_value)) = flags.iter().find(|(n, _)| n == name) else {
            return Err(format!(
                "unknown mount option {name:?}; options are the flags of `ossmount mount` with underscores (cache_dir=..., endpoint=..., allow_other), plus {}",
                GENERIC.join(", ")
            ));
        };
        out.push(format!("--{}", name.replace('_', "-")));
        match (takes_value, value) {
            (true, Some(v)) => out.push(v.to_string()),
            (true, None) => return Err(format!("mount option {name} needs a value: {name}=...")),
            (false, None) => {}
            (false, Some(_)) => return Err(format!("mount option {name} takes no value")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn helper_calls_become_mount_flags() {
        let args = s(&[
            "oss://b/p/",
            "/mnt/x",
            "-o",
            "rw,endpoint=http://e,cache_dir=/var/cache/o,allow_other,_netdev,x-systemd.automount",
        ]);
        assert!(is_helper_call(&args));
        assert_eq!(
            translate(&args).unwrap(),
            s(&[
                "mount",
                "oss://b/p/",
                "/mnt/x",
                "--endpoint",
                "http://e",
                "--cache-dir",
                "/var/cache/o",
                "--allow-other"
            ])
        );
        // The memory target, as every mount flag, has its -o spelling.
        assert_eq!(
            translate(&s(&["oss://b/", "/m", "-o", "memory_limit=256MiB"])).unwrap(),
            s(&["mount", "oss://b/", "/m", "--memory-limit", "256MiB"])
        );
        let err = translate(&s(&["oss://b/", "/m", "-o", "cache_sise=1"])).unwrap_err();
        assert!(err.contains("\"cache_sise\""), "{err}");
        assert!(translate(&s(&["oss://b/", "/m", "-o", "cache_dir"])).is_err());
        assert!(!is_helper_call(&s(&["mount", "oss://b/"])));
        // An S3 source is a helper call too, turned into the same flags.
        let args = s(&["s3://b/p/", "/m", "-o", "endpoint=http://e,ro"]);
        assert!(is_helper_call(&args));
        assert_eq!(
            translate(&args).unwrap(),
            s(&["mount", "s3://b/p/", "/m", "--endpoint", "http://e"])
        );
    }
}
