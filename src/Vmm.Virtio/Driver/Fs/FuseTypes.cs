using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Driver.Fs;

/// <summary>What FUSE_INIT negotiated.</summary>
/// <param name="Minor">The minor version both sides speak: the lower of the driver's and the device's.</param>
/// <param name="Flags">The INIT flags the device granted of those the driver asked for.</param>
/// <param name="MaxWrite">Most bytes of one WRITE (the device's max_write, capped by the driver's buffers).</param>
/// <param name="MaxRead">Most bytes of one READ or READDIRPLUS (max_pages pages with FUSE_MAX_PAGES, else 32; capped likewise).</param>
/// <param name="DeviceMinor">The minor version the device announced.</param>
/// <param name="DeviceMaxWrite">max_write as the device announced it.</param>
/// <param name="DeviceMaxPages">max_pages as the device announced it (0 without FUSE_MAX_PAGES).</param>
public sealed record FuseInitResult(uint Minor, uint Flags, int MaxWrite, int MaxRead, uint DeviceMinor, uint DeviceMaxWrite, ushort DeviceMaxPages);

/// <summary>A node the device handed out (LOOKUP, CREATE, MKDIR, READDIRPLUS): one lookup the driver owes a FORGET for.</summary>
public readonly record struct FuseEntry(ulong NodeId, ulong Generation, FuseAttr Attr);

/// <summary>An open file or directory: the node and the device's file handle.</summary>
public readonly record struct FuseHandle(ulong NodeId, ulong Fh, uint OpenFlags);

/// <summary>
/// One READDIRPLUS record: the name (raw bytes: a file name need not be UTF-8), the offset to
/// continue after it, the dirent type, and the entry (absent for "." and "..", and when the
/// device gave node id 0: no attributes, no lookup counted).
/// </summary>
public sealed record FuseDirectoryEntry(byte[] Name, ulong Offset, uint Type, FuseEntry? Entry)
{
    public bool IsDotOrDotDot => Name is [(byte)'.'] or [(byte)'.', (byte)'.'];
}

/// <summary>STATFS: block and inode counts of the exported file system.</summary>
public readonly record struct FuseStatFs(ulong Blocks, ulong FreeBlocks, ulong AvailableBlocks, ulong Files, ulong FreeFiles, uint BlockSize, uint NameLength, uint FragmentSize);
