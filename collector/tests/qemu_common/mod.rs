//! Running real QEMU in tests: finding the binary and the guest assets (or saying why a test
//! must skip), building a tiny multiboot guest, and a guard that kills QEMU when the test ends.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::{CodeAssembler, al, ecx};

/// The QEMU binary: `$FLEETMIND_QEMU`, else `qemu-system-x86_64` on `PATH`.
pub fn qemu_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FLEETMIND_QEMU") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("FLEETMIND_QEMU={} is not a file", path.display()))
        };
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "qemu-system-x86_64 is not on PATH (apt-get install qemu-system-x86)".to_string()
        })
}

/// The QEMU version line (`QEMU emulator version 10.0.2 ...`), for the test log.
pub fn qemu_version(qemu: &Path) -> String {
    Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// The guest kernel and initramfs built by `scripts/guest-assets`, found where that script
/// puts them (`$FLEETMIND_GUEST_DIR`, default `/var/cache/fleetmind/guest`).
pub fn guest_assets() -> Result<(PathBuf, PathBuf), String> {
    let dir = std::env::var_os("FLEETMIND_GUEST_DIR").map_or_else(
        || PathBuf::from("/var/cache/fleetmind/guest"),
        PathBuf::from,
    );
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initramfs.cpio.gz");
    if kernel.is_file() && initrd.is_file() {
        Ok((kernel, initrd))
    } else {
        Err(format!(
            "no guest kernel and initramfs in {} (run scripts/guest-assets)",
            dir.display()
        ))
    }
}

/// Port the multiboot guest writes to in its loop (the POST-code port: nothing listens).
pub const GUEST_PORT: u16 = 0x80;

/// A multiboot image (QEMU's `-kernel` loads it) of 32-bit code that loops forever doing
/// `out 0x80, al` and a short countdown, so the vCPU exits to KVM steadily.
pub fn multiboot_image() -> Vec<u8> {
    const LOAD: u32 = 0x0010_0000;
    const HEADER_LEN: u32 = 32;
    const MAGIC: u32 = 0x1BAD_B002;
    // Bit 16: the load addresses below are valid (an a.out-kludge image, not ELF).
    const FLAGS: u32 = 1 << 16;
    let entry = LOAD + HEADER_LEN;
    let header = [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)),
        LOAD,  // header_addr: the header is at the start of the image
        LOAD,  // load_addr
        0,     // load_end_addr: 0 = the whole file
        0,     // bss_end_addr: no bss
        entry, // entry_addr
    ];
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    let mut top = a.create_label();
    let mut spin = a.create_label();
    a.set_label(&mut top).expect("label");
    a.out(u32::from(GUEST_PORT), al).expect("out");
    a.mov(ecx, 1000u32).expect("mov");
    a.set_label(&mut spin).expect("label");
    a.dec(ecx).expect("dec");
    a.jnz(spin).expect("jnz");
    a.jmp(top).expect("jmp");
    let code = a.assemble(u64::from(entry)).expect("assembles");
    let mut image: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
    image.extend_from_slice(&code);
    image
}

/// A running QEMU, killed (and reaped) when dropped.
pub struct Qemu {
    child: Child,
    /// Its QMP socket.
    pub qmp: PathBuf,
    /// Where its stderr (and serial console, if asked) go.
    pub log: PathBuf,
    pub started: Instant,
}

impl Qemu {
    /// Starts `qemu` with a QMP server on `qmp` and the common options (no display, no default
    /// devices, no user config), plus `args`. stderr goes to `<qmp>.log`.
    pub fn start(qemu: &Path, qmp: &Path, args: &[&str]) -> Self {
        let log = qmp.with_extension("log");
        let stderr = std::fs::File::create(&log).expect("create the QEMU log");
        let child = Command::new(qemu)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(["-display", "none", "-nodefaults", "-no-user-config"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn QEMU");
        Self {
            child,
            qmp: qmp.to_path_buf(),
            log,
            started: Instant::now(),
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// QEMU's stderr so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills QEMU and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Calls `attempt` every `every` until it returns `Some` or `deadline` passes.
pub async fn poll<T>(
    deadline: Duration,
    every: Duration,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
