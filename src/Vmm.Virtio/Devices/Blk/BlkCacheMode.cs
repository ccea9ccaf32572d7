namespace Vmm.Virtio.Devices.Blk;

/// <summary>
/// How writes reach the disk (<c>--cache</c>), as qemu-storage-daemon's cache modes: the page
/// cache or not, and whether FLUSH and writethrough reach stable storage.
/// </summary>
public enum BlkCacheMode
{
    /// <summary>
    /// Through the host page cache. A completed write is in host RAM; FLUSH (fdatasync) makes
    /// every completed write durable; with the driver's writeback off (WCE = 0) each write is
    /// durable before it completes (RWF_DSYNC).
    /// </summary>
    Writeback,

    /// <summary>
    /// O_DIRECT: the host page cache is bypassed, so a completed write is on the device, or in
    /// the device's volatile cache until a FLUSH, as the writeback bit (WCE) says. Buffers the
    /// kernel cannot take directly (misaligned in guest memory) go through a bounce buffer.
    /// </summary>
    None,

    /// <summary>As <see cref="Writeback"/>, but FLUSH and writethrough are ignored: nothing is ever synced (for throw-away disks).</summary>
    Unsafe,
}
