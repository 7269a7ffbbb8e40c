//! The image's `User`, as the job's ids inside its user namespace.

use crate::{ImageError, Root};

impl Root {
    /// The ids the image's `User` names, as the job's ids inside its user namespace: numbers
    /// (`1001`, `1001:1001`) or names looked up in the image's own `/etc/passwd` and
    /// `/etc/group` (read inside the root, never through a link out of it). `None` keeps
    /// warden's uid 1000: no `User`, or root — root in an image never means root in a job.
    pub fn user_ids(&self) -> Result<Option<(u32, u32)>, ImageError> {
        let Some(user) = self.info.user.as_deref() else {
            return Ok(None);
        };
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let passwd = || self.read_etc("passwd");
        let unknown = |what: &str, name: &str| {
            ImageError::Refused(format!(
                "the image's User {user:?} names {what} {name:?}, which its /etc/{} does not list",
                if what == "user" { "passwd" } else { "group" }
            ))
        };
        let (uid, primary) = match u.parse::<u32>() {
            Ok(n) => (n, primary_gid(&passwd()?, n)),
            Err(_) => {
                let passwd = passwd()?;
                let line = field_line(&passwd, u).ok_or_else(|| unknown("user", u))?;
                let f: Vec<&str> = line.split(':').collect();
                let uid = f
                    .get(2)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| unknown("user", u))?;
                (uid, f.get(3).and_then(|v| v.parse().ok()))
            }
        };
        let gid = match g {
            None => primary.unwrap_or(uid),
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    let groups = self.read_etc("group")?;
                    let line = field_line(&groups, g).ok_or_else(|| unknown("group", g))?;
                    line.split(':')
                        .nth(2)
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| unknown("group", g))?
                }
            },
        };
        if uid == 0 || gid == 0 {
            return Ok(None);
        }
        Ok(Some((uid, gid)))
    }

    /// `/etc/NAME` of the image (empty if it has none), resolved inside the root.
    fn read_etc(&self, name: &str) -> Result<String, ImageError> {
        use std::io::Read;
        let root = rustix::fs::open(
            &self.rootfs,
            rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| ImageError::Unavailable(format!("{}: {e}", self.rootfs.display())))?;
        let file = match rustix::fs::openat2(
            &root,
            format!("etc/{name}").as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
            rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(f) => f,
            Err(rustix::io::Errno::NOENT) => return Ok(String::new()),
            Err(e) => return Err(ImageError::Refused(format!("the image's /etc/{name}: {e}"))),
        };
        let mut text = String::new();
        std::fs::File::from(file)
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|e| ImageError::Refused(format!("the image's /etc/{name}: {e}")))?;
        Ok(text)
    }
}

/// The line of a passwd/group file whose first field is `name`.
fn field_line<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find(|l| l.split(':').next() == Some(name))
}

/// The primary gid of the passwd line whose uid is `uid`.
fn primary_gid(text: &str, uid: u32) -> Option<u32> {
    text.lines()
        .find(|l| l.split(':').nth(2).and_then(|v| v.parse::<u32>().ok()) == Some(uid))
        .and_then(|l| l.split(':').nth(3))
        .and_then(|g| g.parse().ok())
}
