using System.Runtime.InteropServices;

namespace Vmm.Virtio.Spec;

// The FUSE wire protocol as virtio-fs carries it (virtio 1.2, 5.11.6: each request is a
// fuse_in_header and its arguments in device-readable buffers, then a fuse_out_header and
// the reply in device-writable ones). Structures and numbers are those of Linux's
// include/uapi/linux/fuse.h, protocol 7.36 (what a Linux 6.1 guest sends). Fields are in the
// guest's byte order (virtio-fs: "the FUSE protocol ... in the guest's native endianness");
// this project's guests are little-endian. Every structure has a size test.

/// <summary>FUSE opcodes (enum fuse_opcode).</summary>
public enum FuseOpcode : uint
{
    FUSE_LOOKUP = 1,
    FUSE_FORGET = 2,
    FUSE_GETATTR = 3,
    FUSE_SETATTR = 4,
    FUSE_MKDIR = 9,
    FUSE_UNLINK = 10,
    FUSE_RMDIR = 11,
    FUSE_RENAME = 12,
    FUSE_OPEN = 14,
    FUSE_READ = 15,
    FUSE_WRITE = 16,
    FUSE_STATFS = 17,
    FUSE_RELEASE = 18,
    FUSE_FSYNC = 20,
    FUSE_FLUSH = 25,
    FUSE_INIT = 26,
    FUSE_OPENDIR = 27,
    FUSE_READDIR = 28,
    FUSE_RELEASEDIR = 29,
    FUSE_CREATE = 35,
    FUSE_INTERRUPT = 36,
    FUSE_DESTROY = 38,
    FUSE_BATCH_FORGET = 42,
    FUSE_READDIRPLUS = 44,
}

/// <summary>Protocol constants of fuse.h.</summary>
public static class Fuse
{
    /// <summary>FUSE_KERNEL_VERSION: the only major version there is.</summary>
    public const uint KernelVersion = 7;

    /// <summary>The minor version the driver speaks (FUSE_KERNEL_MINOR_VERSION of Linux 6.1).</summary>
    public const uint KernelMinorVersion = 36;

    /// <summary>The oldest minor version the driver accepts from a device: 7.31 is what virtio-fs was introduced with.</summary>
    public const uint MinimumMinorVersion = 31;

    /// <summary>FUSE_ROOT_ID: the node id of the exported directory; it is never looked up or forgotten.</summary>
    public const ulong RootId = 1;

    /// <summary>FUSE_NAME_MAX as Linux enforces it on directory entries (fs/fuse/readdir.c).</summary>
    public const int NameMax = 1024;

    /// <summary>
    /// Linux takes replies with an error from -511 to -1 (fs/fuse/dev.c rejects error &lt;= -512
    /// and &gt; 0: kernel-internal codes start at -512).
    /// </summary>
    public const int MaxErrno = 511;

    /// <summary>FUSE_DEFAULT_MAX_PAGES_PER_REQ: the request size without FUSE_MAX_PAGES, in 4 KiB pages.</summary>
    public const int DefaultMaxPages = 32;

    /// <summary>FUSE_MAX_MAX_PAGES: the largest max_pages Linux accepts.</summary>
    public const int MaxMaxPages = 256;

    /// <summary>unique ids advance by FUSE_REQ_ID_STEP: bit 0 is FUSE_INT_REQ_BIT, which marks interrupt replies.</summary>
    public const ulong RequestIdStep = 2;

    // INIT flags (fuse_init_in.flags / fuse_init_out.flags).
    public const uint FUSE_ASYNC_READ = 1u << 0;
    public const uint FUSE_ATOMIC_O_TRUNC = 1u << 3;
    public const uint FUSE_BIG_WRITES = 1u << 5;
    public const uint FUSE_DO_READDIRPLUS = 1u << 13;
    public const uint FUSE_PARALLEL_DIROPS = 1u << 18;
    public const uint FUSE_MAX_PAGES = 1u << 22;
    public const uint FUSE_INIT_EXT = 1u << 30;

    /// <summary>FUSE_RELEASE_FLUSH: release also flushes (the driver sends FLUSH itself first, as close(2) does).</summary>
    public const uint FUSE_RELEASE_FLUSH = 1u << 0;

    /// <summary>FUSE_FSYNC_FDATASYNC: sync data only.</summary>
    public const uint FUSE_FSYNC_FDATASYNC = 1u << 0;

    // open(2) flags (asm-generic/fcntl.h) as FUSE carries them.
    public const uint O_RDONLY = 0;
    public const uint O_WRONLY = 1;
    public const uint O_RDWR = 2;
    public const uint O_CREAT = 0x40;
    public const uint O_EXCL = 0x80;
    public const uint O_TRUNC = 0x200;
    public const uint O_DIRECTORY = 0x10000;

    // st_mode file types (S_IFMT).
    public const uint S_IFMT = 0xF000;
    public const uint S_IFSOCK = 0xC000;
    public const uint S_IFLNK = 0xA000;
    public const uint S_IFREG = 0x8000;
    public const uint S_IFBLK = 0x6000;
    public const uint S_IFDIR = 0x4000;
    public const uint S_IFCHR = 0x2000;
    public const uint S_IFIFO = 0x1000;

    /// <summary>
    /// Whether <paramref name="mode"/> has one of the seven file types (Linux's fuse_valid_type:
    /// an attribute with any other type is the back-end's error, -EIO).
    /// </summary>
    public static bool IsValidType(uint mode) => (mode & S_IFMT) is S_IFREG or S_IFDIR or S_IFLNK or S_IFCHR or S_IFBLK or S_IFIFO or S_IFSOCK;

    /// <summary>FUSE_DIRENT_ALIGN: directory records are 8-byte aligned.</summary>
    public static int DirentAlign(int length) => (length + 7) & ~7;
}

/// <summary>struct fuse_in_header (40 bytes): every request starts with it.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseInHeader
{
    public const int Size = 40;

    /// <summary>Bytes of the whole device-readable request: this header plus the arguments.</summary>
    public uint Len;
    public FuseOpcode Opcode;
    public ulong Unique;
    public ulong NodeId;
    public uint Uid;
    public uint Gid;
    public uint Pid;
    public ushort TotalExtlen;
    public ushort Padding;
}

/// <summary>struct fuse_out_header (16 bytes): every reply starts with it.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseOutHeader
{
    public const int Size = 16;

    /// <summary>Bytes of the whole reply: this header plus the payload.</summary>
    public uint Len;

    /// <summary>0, or a negated errno.</summary>
    public int Error;
    public ulong Unique;
}

/// <summary>struct fuse_init_in as of 7.36 (64 bytes: flags2 and 11 unused words after the 16 of older versions).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1, Size = Size)]
public struct FuseInitIn
{
    public const int Size = 64;

    public uint Major;
    public uint Minor;
    public uint MaxReadahead;
    public uint Flags;
    public uint Flags2;

    // uint32_t unused[11]: the rest of the 64 bytes (StructLayout.Size).
}

/// <summary>struct fuse_init_out (64 bytes since 7.23; FUSE_COMPAT_22_INIT_OUT_SIZE = 24 before).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1, Size = Size)]
public struct FuseInitOut
{
    public const int Size = 64;

    public uint Major;
    public uint Minor;
    public uint MaxReadahead;
    public uint Flags;
    public ushort MaxBackground;
    public ushort CongestionThreshold;
    public uint MaxWrite;
    public uint TimeGran;
    public ushort MaxPages;
    public ushort MapAlignment;
    public uint Flags2;

    // uint32_t unused[7]: the rest of the 64 bytes (StructLayout.Size).
}

/// <summary>struct fuse_attr (88 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseAttr
{
    public const int Size = 88;

    public ulong Ino;
    public ulong FileSize;
    public ulong Blocks;
    public ulong Atime;
    public ulong Mtime;
    public ulong Ctime;
    public uint AtimeNsec;
    public uint MtimeNsec;
    public uint CtimeNsec;
    public uint Mode;
    public uint Nlink;
    public uint Uid;
    public uint Gid;
    public uint Rdev;
    public uint BlkSize;
    public uint Flags;

    public readonly bool IsRegularFile => (Mode & Fuse.S_IFMT) == Fuse.S_IFREG;

    public readonly bool IsDirectory => (Mode & Fuse.S_IFMT) == Fuse.S_IFDIR;
}

/// <summary>struct fuse_entry_out (128 bytes): what LOOKUP, CREATE, MKDIR and each READDIRPLUS record return.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseEntryOut
{
    public const int Size = 128;

    /// <summary>The node id; 0 in a LOOKUP reply means "no such entry" (a negative entry).</summary>
    public ulong NodeId;
    public ulong Generation;
    public ulong EntryValid;
    public ulong AttrValid;
    public uint EntryValidNsec;
    public uint AttrValidNsec;
    public FuseAttr Attr;
}

/// <summary>struct fuse_forget_in (8 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseForgetIn
{
    public const int Size = 8;

    public ulong Nlookup;
}

/// <summary>struct fuse_getattr_in (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseGetattrIn
{
    public const int Size = 16;

    public uint GetattrFlags;
    public uint Dummy;
    public ulong Fh;
}

/// <summary>struct fuse_attr_out (104 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseAttrOut
{
    public const int Size = 104;

    public ulong AttrValid;
    public uint AttrValidNsec;
    public uint Dummy;
    public FuseAttr Attr;
}

/// <summary>struct fuse_mkdir_in (8 bytes), followed by the NUL-terminated name.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseMkdirIn
{
    public const int Size = 8;

    public uint Mode;
    public uint Umask;
}

/// <summary>struct fuse_rename_in (8 bytes), followed by the old and the new NUL-terminated names.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseRenameIn
{
    public const int Size = 8;

    public ulong NewDir;
}

/// <summary>struct fuse_open_in (8 bytes): OPEN and OPENDIR.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseOpenIn
{
    public const int Size = 8;

    public uint Flags;
    public uint OpenFlags;
}

/// <summary>struct fuse_create_in (16 bytes), followed by the NUL-terminated name.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseCreateIn
{
    public const int Size = 16;

    public uint Flags;
    public uint Mode;
    public uint Umask;
    public uint OpenFlags;
}

/// <summary>struct fuse_open_out (16 bytes): OPEN, OPENDIR, and after the entry in CREATE.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseOpenOut
{
    public const int Size = 16;

    public ulong Fh;
    public uint OpenFlags;
    public uint Padding;
}

/// <summary>struct fuse_release_in (24 bytes): RELEASE and RELEASEDIR.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseReleaseIn
{
    public const int Size = 24;

    public ulong Fh;
    public uint Flags;
    public uint ReleaseFlags;
    public ulong LockOwner;
}

/// <summary>struct fuse_flush_in (24 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseFlushIn
{
    public const int Size = 24;

    public ulong Fh;
    public uint Unused;
    public uint Padding;
    public ulong LockOwner;
}

/// <summary>struct fuse_read_in (40 bytes): READ, READDIR and READDIRPLUS.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseReadIn
{
    public const int Size = 40;

    public ulong Fh;
    public ulong Offset;
    public uint ReadSize;
    public uint ReadFlags;
    public ulong LockOwner;
    public uint Flags;
    public uint Padding;
}

/// <summary>struct fuse_write_in (40 bytes), followed by the data.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseWriteIn
{
    public const int Size = 40;

    public ulong Fh;
    public ulong Offset;
    public uint WriteSize;
    public uint WriteFlags;
    public ulong LockOwner;
    public uint Flags;
    public uint Padding;
}

/// <summary>struct fuse_write_out (8 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseWriteOut
{
    public const int Size = 8;

    public uint WriteSize;
    public uint Padding;
}

/// <summary>struct fuse_fsync_in (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseFsyncIn
{
    public const int Size = 16;

    public ulong Fh;
    public uint FsyncFlags;
    public uint Padding;
}

/// <summary>struct fuse_statfs_out (80 bytes): struct fuse_kstatfs.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1, Size = Size)]
public struct FuseStatfsOut
{
    public const int Size = 80;

    public ulong Blocks;
    public ulong Bfree;
    public ulong Bavail;
    public ulong Files;
    public ulong Ffree;
    public uint Bsize;
    public uint NameLen;
    public uint Frsize;
    public uint Padding;

    // uint32_t spare[6]: the rest of the 80 bytes (StructLayout.Size).
}

/// <summary>struct fuse_dirent (24 bytes, then namelen name bytes, padded to 8).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseDirent
{
    public const int Size = 24;

    public ulong Ino;
    public ulong Off;
    public uint NameLen;
    public uint Type;
}

/// <summary>struct fuse_direntplus: a fuse_entry_out, then a fuse_dirent (152 bytes before the name).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct FuseDirentPlus
{
    public const int Size = FuseEntryOut.Size + FuseDirent.Size;

    public FuseEntryOut EntryOut;
    public FuseDirent Dirent;
}
