using System.Runtime.InteropServices;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Driver.Fs;

/// <summary>The FUSE operations, each with the checks of its reply (Linux's fs/fuse/dir.c, file.c, readdir.c, inode.c).</summary>
public sealed partial class VirtioFsSession
{
    /// <summary>INIT flags the driver asks for; the device grants a subset.</summary>
    public const uint WantedInitFlags =
        Fuse.FUSE_ASYNC_READ | Fuse.FUSE_BIG_WRITES | Fuse.FUSE_DO_READDIRPLUS | Fuse.FUSE_PARALLEL_DIROPS | Fuse.FUSE_MAX_PAGES | Fuse.FUSE_INIT_EXT;

    /// <summary>Buffer of one READDIR or READDIRPLUS.</summary>
    private const int DirectoryReadSize = 32 * 1024;

    private bool _noFlush;
    private bool _noFsync;

    /// <summary>Whether READDIRPLUS may be used (FUSE_DO_READDIRPLUS granted); otherwise READDIR and LOOKUP.</summary>
    public bool ReadDirPlusGranted => Init is { } init && (init.Flags & Fuse.FUSE_DO_READDIRPLUS) != 0;

    /// <summary>
    /// FUSE_INIT, the first request of a session: version 7.36 and <see cref="WantedInitFlags"/>
    /// out; the device must answer 7.x with x at least 31 and a whole fuse_init_out.
    /// </summary>
    public FuseInitResult Initialize()
    {
        if (Init is not null)
        {
            throw new InvalidOperationException("FUSE_INIT was already done on this session.");
        }

        var request = new FuseInitIn
        {
            Major = Fuse.KernelVersion,
            Minor = Fuse.KernelMinorVersion,
            MaxReadahead = (uint)_options.MaxIoSize,
            Flags = WantedInitFlags,
        };
        Call call = Complete(Submit(FuseOpcode.FUSE_INIT, 0, AsBytes(ref request), [], [], ReplyShape.UpTo(FuseInitOut.Size)));
        if (call.PayloadLength < 8)
        {
            throw Violation(call, $"{call.PayloadLength} bytes of fuse_init_out, not even major and minor");
        }

        uint major = ReadReply<uint>(call);
        uint minor = ReadReply<uint>(call, 4);
        if (major != Fuse.KernelVersion || minor < Fuse.MinimumMinorVersion)
        {
            string reason = $"the virtio-fs device speaks FUSE {major}.{minor}; this driver speaks 7.{Fuse.MinimumMinorVersion} to 7.{Fuse.KernelMinorVersion}";
            Abort(reason);
            throw new FuseProtocolException(reason);
        }

        if (call.PayloadLength != FuseInitOut.Size)
        {
            throw Violation(call, $"fuse_init_out is {call.PayloadLength} bytes, not {FuseInitOut.Size}");
        }

        FuseInitOut reply = ReadReply<FuseInitOut>(call);
        if (reply.MaxWrite < 4096)
        {
            throw Violation(call, $"max_write {reply.MaxWrite} is below one page");
        }

        uint granted = reply.Flags & WantedInitFlags;
        int maxPages = (granted & Fuse.FUSE_MAX_PAGES) != 0 ? Math.Clamp((int)reply.MaxPages, 1, Fuse.MaxMaxPages) : Fuse.DefaultMaxPages;
        Init = new FuseInitResult(
            Math.Min(minor, Fuse.KernelMinorVersion),
            granted,
            (int)Math.Min(reply.MaxWrite, (uint)_options.MaxIoSize),
            Math.Min(maxPages * 4096, _options.MaxIoSize),
            minor,
            reply.MaxWrite,
            (granted & Fuse.FUSE_MAX_PAGES) != 0 ? reply.MaxPages : (ushort)0);
        return Init;
    }

    /// <summary>LOOKUP <paramref name="name"/> in <paramref name="parent"/>; null when there is no such entry (ENOENT, or node id 0).</summary>
    public FuseEntry? Lookup(ulong parent, ReadOnlySpan<byte> name)
    {
        CheckName(name);
        Call call = Submit(FuseOpcode.FUSE_LOOKUP, parent, [], name, [], ReplyShape.Exact(FuseEntryOut.Size));
        int errno = CompleteWithErrno(call);
        if (errno == Errno.ENOENT)
        {
            return null;
        }

        if (errno != 0)
        {
            throw new FuseErrorException(FuseOpcode.FUSE_LOOKUP, errno, Describe(name));
        }

        FuseEntryOut entry = ReadReply<FuseEntryOut>(call);
        if (entry.NodeId == 0)
        {
            // A negative entry: "no such name", cacheable (fs/fuse/dir.c fuse_lookup_name).
            return null;
        }

        return Hold(CheckEntry(call, entry, null));
    }

    /// <summary>
    /// Gives back <paramref name="count"/> of the lookups the driver holds on <paramref name="nodeId"/>
    /// (each LOOKUP, CREATE, MKDIR and READDIRPLUS entry that named it is one): one FORGET on the
    /// hiprio queue, which has no reply. Giving back more than is held is the caller's error.
    /// </summary>
    public void Forget(ulong nodeId, ulong count = 1)
    {
        ThrowIfLost();
        ulong held = _lookups.GetValueOrDefault(nodeId);
        if (count == 0 || count > held)
        {
            throw new InvalidOperationException($"Node {nodeId} has {held} lookups held, not {count} to forget.");
        }

        if (held == count)
        {
            _lookups.Remove(nodeId);
        }
        else
        {
            _lookups[nodeId] = held - count;
        }

        SendForget(nodeId, count);
    }

    /// <summary>FORGETs every node the driver holds.</summary>
    public void ForgetAll()
    {
        foreach ((ulong node, ulong count) in _lookups.ToArray())
        {
            Forget(node, count);
        }
    }

    public FuseAttr GetAttr(ulong nodeId)
    {
        var request = new FuseGetattrIn();
        Call call = Complete(Submit(FuseOpcode.FUSE_GETATTR, nodeId, AsBytes(ref request), [], [], ReplyShape.Exact(FuseAttrOut.Size)));
        FuseAttrOut reply = ReadReply<FuseAttrOut>(call);
        CheckAttr(call, reply.Attr);
        return reply.Attr;
    }

    public FuseHandle OpenDir(ulong nodeId) => OpenCommon(FuseOpcode.FUSE_OPENDIR, nodeId, Fuse.O_RDONLY | Fuse.O_DIRECTORY);

    /// <summary>
    /// READDIRPLUS from <paramref name="offset"/> (0, then the last record's offset); empty at the
    /// end of the directory. Every record is checked: a name of 1 to 1024 bytes without '/' or
    /// NUL, a record that fits the reply, a valid entry. Each entry with a node id (not "." or
    /// "..") is one lookup the driver now holds.
    /// </summary>
    public IReadOnlyList<FuseDirectoryEntry> ReadDirPlus(FuseHandle dir, ulong offset) => ReadDirectory(FuseOpcode.FUSE_READDIRPLUS, dir, offset);

    /// <summary>READDIR from <paramref name="offset"/>: names, offsets and types, no entries.</summary>
    public IReadOnlyList<FuseDirectoryEntry> ReadDir(FuseHandle dir, ulong offset) => ReadDirectory(FuseOpcode.FUSE_READDIR, dir, offset);

    public void ReleaseDir(FuseHandle dir) => ReleaseCommon(FuseOpcode.FUSE_RELEASEDIR, dir, Fuse.O_RDONLY | Fuse.O_DIRECTORY);

    /// <summary>OPEN with open(2) <paramref name="flags"/> (O_RDONLY, O_RDWR, ...).</summary>
    public FuseHandle Open(ulong nodeId, uint flags) => OpenCommon(FuseOpcode.FUSE_OPEN, nodeId, flags);

    /// <summary>One READ of up to <see cref="FuseInitResult.MaxRead"/> bytes into <paramref name="destination"/>; fewer at the end of the file, 0 past it.</summary>
    public int Read(FuseHandle file, ulong offset, Span<byte> destination)
    {
        PendingRead read = SubmitRead(file, offset, Math.Min(destination.Length, RequireInit().MaxRead));
        ReadOnlySpan<byte> data = CompleteRead(read);
        data.CopyTo(destination);
        return data.Length;
    }

    /// <summary>
    /// Puts a READ of <paramref name="size"/> bytes (at most <see cref="FuseInitResult.MaxRead"/>)
    /// on the queue without waiting; at most <see cref="MaxRequestsInFlight"/> requests may be out.
    /// </summary>
    public PendingRead SubmitRead(FuseHandle file, ulong offset, int size, object? state = null)
    {
        int max = RequireInit().MaxRead;
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(size);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(size, max);
        var request = new FuseReadIn { Fh = file.Fh, Offset = offset, ReadSize = (uint)size, Flags = Fuse.O_RDONLY };
        return new PendingRead(Submit(FuseOpcode.FUSE_READ, file.NodeId, AsBytes(ref request), [], [], ReplyShape.UpTo(), readSize: size), offset, size, state);
    }

    /// <summary>
    /// Waits for <paramref name="read"/> and returns the bytes read (empty at the end of the file).
    /// The span points into the session's buffer and is valid until the next request is submitted.
    /// </summary>
    public ReadOnlySpan<byte> CompleteRead(PendingRead read)
    {
        ArgumentNullException.ThrowIfNull(read);
        Call call = Complete(read.Call);
        return _memory.GetSpan(call.Slot.Data, call.DataLength);
    }

    /// <summary>One WRITE of up to <see cref="FuseInitResult.MaxWrite"/> bytes; returns what the device wrote (at most that).</summary>
    public int Write(FuseHandle file, ulong offset, ReadOnlySpan<byte> data)
    {
        int size = Math.Min(data.Length, RequireInit().MaxWrite);
        ArgumentOutOfRangeException.ThrowIfZero(size);
        var request = new FuseWriteIn { Fh = file.Fh, Offset = offset, WriteSize = (uint)size, Flags = Fuse.O_RDWR };
        Call call = Complete(Submit(FuseOpcode.FUSE_WRITE, file.NodeId, AsBytes(ref request), [], [], ReplyShape.Exact(FuseWriteOut.Size), data[..size]));
        uint written = ReadReply<FuseWriteOut>(call).WriteSize;
        if (written > (uint)size)
        {
            throw Violation(call, $"fuse_write_out.size {written} is more than the {size} bytes sent");
        }

        return (int)written;
    }

    /// <summary>Writes all of <paramref name="data"/> at <paramref name="offset"/> in requests of at most max_write bytes, going on after short writes.</summary>
    public void WriteAll(FuseHandle file, ulong offset, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            int written = Write(file, offset, data);
            if (written == 0)
            {
                throw new FuseErrorException(FuseOpcode.FUSE_WRITE, Errno.EIO, $"at offset {offset} (the device wrote 0 of {data.Length} bytes)");
            }

            offset += (ulong)written;
            data = data[written..];
        }
    }

    /// <summary>FLUSH, as close(2) sends it; a device without FLUSH (ENOSYS) is not asked again (fs/fuse/file.c fuse_flush).</summary>
    public void Flush(FuseHandle file)
    {
        if (_noFlush)
        {
            return;
        }

        var request = new FuseFlushIn { Fh = file.Fh };
        int errno = CompleteWithErrno(Submit(FuseOpcode.FUSE_FLUSH, file.NodeId, AsBytes(ref request), [], [], ReplyShape.Exact(0)));
        if (errno == Errno.ENOSYS)
        {
            _noFlush = true;
        }
        else if (errno != 0)
        {
            throw new FuseErrorException(FuseOpcode.FUSE_FLUSH, errno);
        }
    }

    /// <summary>FSYNC (data and metadata unless <paramref name="dataOnly"/>); ENOSYS counts as done, as Linux treats it.</summary>
    public void Fsync(FuseHandle file, bool dataOnly = false)
    {
        if (_noFsync)
        {
            return;
        }

        var request = new FuseFsyncIn { Fh = file.Fh, FsyncFlags = dataOnly ? Fuse.FUSE_FSYNC_FDATASYNC : 0 };
        int errno = CompleteWithErrno(Submit(FuseOpcode.FUSE_FSYNC, file.NodeId, AsBytes(ref request), [], [], ReplyShape.Exact(0)));
        if (errno == Errno.ENOSYS)
        {
            _noFsync = true;
        }
        else if (errno != 0)
        {
            throw new FuseErrorException(FuseOpcode.FUSE_FSYNC, errno);
        }
    }

    /// <summary>RELEASE: the file handle is closed (give the flags it was opened with).</summary>
    public void Release(FuseHandle file, uint openFlags) => ReleaseCommon(FuseOpcode.FUSE_RELEASE, file, openFlags);

    /// <summary>
    /// CREATE <paramref name="name"/> in <paramref name="parent"/> and open it (O_CREAT is added to
    /// <paramref name="flags"/>); the reply must be a regular file with a fresh node id.
    /// </summary>
    public (FuseEntry Entry, FuseHandle Handle) Create(ulong parent, ReadOnlySpan<byte> name, uint flags, uint mode)
    {
        CheckName(name);
        var request = new FuseCreateIn { Flags = flags | Fuse.O_CREAT, Mode = Fuse.S_IFREG | (mode & 0xFFF) };
        Call call = Complete(Submit(FuseOpcode.FUSE_CREATE, parent, AsBytes(ref request), name, [], ReplyShape.Exact(FuseEntryOut.Size + FuseOpenOut.Size)), Describe(name));
        FuseEntry entry = Hold(CheckEntry(call, ReadReply<FuseEntryOut>(call), Fuse.S_IFREG));
        FuseOpenOut open = ReadReply<FuseOpenOut>(call, FuseEntryOut.Size);
        return (entry, new FuseHandle(entry.NodeId, open.Fh, open.OpenFlags));
    }

    /// <summary>MKDIR; the reply must be a directory with a fresh node id.</summary>
    public FuseEntry Mkdir(ulong parent, ReadOnlySpan<byte> name, uint mode)
    {
        CheckName(name);
        var request = new FuseMkdirIn { Mode = mode & 0xFFF };
        Call call = Complete(Submit(FuseOpcode.FUSE_MKDIR, parent, AsBytes(ref request), name, [], ReplyShape.Exact(FuseEntryOut.Size)), Describe(name));
        return Hold(CheckEntry(call, ReadReply<FuseEntryOut>(call), Fuse.S_IFDIR));
    }

    /// <summary>UNLINK <paramref name="name"/> (looked up first and held across the request; see <see cref="RemoveCommon"/>).</summary>
    public void Unlink(ulong parent, ReadOnlySpan<byte> name) => RemoveCommon(FuseOpcode.FUSE_UNLINK, parent, name);

    /// <summary>RMDIR <paramref name="name"/> (looked up first and held across the request).</summary>
    public void Rmdir(ulong parent, ReadOnlySpan<byte> name) => RemoveCommon(FuseOpcode.FUSE_RMDIR, parent, name);

    /// <summary>
    /// RENAME; both names are looked up first and held across the request, as the Linux VFS
    /// holds both dentries (the C virtiofsd answers EIO for a name it has no node for).
    /// </summary>
    public void Rename(ulong oldParent, ReadOnlySpan<byte> oldName, ulong newParent, ReadOnlySpan<byte> newName)
    {
        CheckName(oldName);
        CheckName(newName);
        FuseEntry source = Lookup(oldParent, oldName) ?? throw new FuseErrorException(FuseOpcode.FUSE_RENAME, Errno.ENOENT, Describe(oldName));
        FuseEntry? target = null;
        try
        {
            target = Lookup(newParent, newName);
            var request = new FuseRenameIn { NewDir = newParent };
            Complete(Submit(FuseOpcode.FUSE_RENAME, oldParent, AsBytes(ref request), oldName, newName, ReplyShape.Exact(0)), Describe(oldName));
        }
        finally
        {
            ForgetIfUsable(source);
            if (target is { } held)
            {
                ForgetIfUsable(held);
            }
        }
    }

    /// <summary>STATFS of the exported file system.</summary>
    public FuseStatFs StatFs()
    {
        Call call = Complete(Submit(FuseOpcode.FUSE_STATFS, Fuse.RootId, [], [], [], ReplyShape.Exact(FuseStatfsOut.Size)));
        FuseStatfsOut s = ReadReply<FuseStatfsOut>(call);
        return new FuseStatFs(s.Blocks, s.Bfree, s.Bavail, s.Files, s.Ffree, s.Bsize, s.NameLen, s.Frsize);
    }

    private FuseInitResult RequireInit() => Init ?? throw new InvalidOperationException("Call Initialize (FUSE_INIT) first.");

    private FuseHandle OpenCommon(FuseOpcode opcode, ulong nodeId, uint flags)
    {
        var request = new FuseOpenIn { Flags = flags };
        Call call = Complete(Submit(opcode, nodeId, AsBytes(ref request), [], [], ReplyShape.Exact(FuseOpenOut.Size)));
        FuseOpenOut reply = ReadReply<FuseOpenOut>(call);
        return new FuseHandle(nodeId, reply.Fh, reply.OpenFlags);
    }

    private void ReleaseCommon(FuseOpcode opcode, FuseHandle handle, uint flags)
    {
        var request = new FuseReleaseIn { Fh = handle.Fh, Flags = flags };
        Complete(Submit(opcode, handle.NodeId, AsBytes(ref request), [], [], ReplyShape.Exact(0)));
    }

    /// <summary>
    /// UNLINK or RMDIR of a name the driver looks up first and holds until the reply, as the Linux
    /// VFS does (the C virtiofsd answers EIO for a name it has no node for).
    /// </summary>
    private void RemoveCommon(FuseOpcode opcode, ulong parent, ReadOnlySpan<byte> name)
    {
        CheckName(name);
        FuseEntry victim = Lookup(parent, name) ?? throw new FuseErrorException(opcode, Errno.ENOENT, Describe(name));
        try
        {
            Complete(Submit(opcode, parent, [], name, [], ReplyShape.Exact(0)), Describe(name));
        }
        finally
        {
            ForgetIfUsable(victim);
        }
    }

    private void ForgetIfUsable(FuseEntry entry)
    {
        if (LostReason is null)
        {
            Forget(entry.NodeId);
        }
    }

    private List<FuseDirectoryEntry> ReadDirectory(FuseOpcode opcode, FuseHandle dir, ulong offset)
    {
        int size = Math.Min(DirectoryReadSize, _options.MaxIoSize);
        var request = new FuseReadIn { Fh = dir.Fh, Offset = offset, ReadSize = (uint)size, Flags = Fuse.O_RDONLY | Fuse.O_DIRECTORY };
        Call call = Complete(Submit(opcode, dir.NodeId, AsBytes(ref request), [], [], ReplyShape.UpTo(), readSize: size));
        ReadOnlySpan<byte> data = _memory.GetSpan(call.Slot.Data, call.DataLength);
        bool plus = opcode == FuseOpcode.FUSE_READDIRPLUS;
        int nameOffset = plus ? FuseDirentPlus.Size : FuseDirent.Size;
        var entries = new List<FuseDirectoryEntry>();
        while (!data.IsEmpty)
        {
            if (data.Length < nameOffset)
            {
                throw Violation(call, $"{data.Length} bytes left over after {entries.Count} records, less than a record header");
            }

            FuseDirent dirent = MemoryMarshal.Read<FuseDirent>(data[(nameOffset - FuseDirent.Size)..]);
            if (dirent.NameLen is 0 or > Fuse.NameMax)
            {
                throw Violation(call, $"record {entries.Count} has a name of {dirent.NameLen} bytes (1 to {Fuse.NameMax} allowed)");
            }

            int recordLength = Fuse.DirentAlign(nameOffset + (int)dirent.NameLen);
            if (recordLength > data.Length)
            {
                throw Violation(call, $"record {entries.Count} is {recordLength} bytes but only {data.Length} are left");
            }

            byte[] name = data.Slice(nameOffset, (int)dirent.NameLen).ToArray();
            if (name.AsSpan().IndexOfAny((byte)'/', (byte)0) >= 0)
            {
                throw Violation(call, $"record {entries.Count} has a name with '/' or NUL in it");
            }

            FuseEntry? entry = null;
            var record = new FuseDirectoryEntry(name, dirent.Off, dirent.Type, null);
            if (plus && !record.IsDotOrDotDot)
            {
                FuseEntryOut entryOut = MemoryMarshal.Read<FuseEntryOut>(data);
                if (entryOut.NodeId != 0)
                {
                    // fs/fuse/readdir.c fuse_direntplus_link: node id 0 means "no entry", which is not an error.
                    entry = CheckEntry(call, entryOut, null);
                }
            }

            entries.Add(entry is null ? record : record with { Entry = entry });
            data = data[recordLength..];
        }

        // Only now, when the whole reply was valid, are the lookups it carries held (and owed a FORGET).
        foreach (FuseDirectoryEntry e in entries)
        {
            if (e.Entry is { } held)
            {
                Hold(held);
            }
        }

        return entries;
    }

    private FuseEntry CheckEntry(Call call, FuseEntryOut entry, uint? type)
    {
        CheckAttr(call, entry.Attr);
        if (type is not null)
        {
            // CREATE and MKDIR make a new node: neither 0 nor the root, and of the asked type (fs/fuse/dir.c).
            if (entry.NodeId is 0 or Fuse.RootId)
            {
                throw Violation(call, $"node id {entry.NodeId} for a new node");
            }

            if ((entry.Attr.Mode & Fuse.S_IFMT) != type)
            {
                throw Violation(call, $"mode 0{Convert.ToString(entry.Attr.Mode, 8)} is not of the type created");
            }
        }

        return new FuseEntry(entry.NodeId, entry.Generation, entry.Attr);
    }

    private void CheckAttr(Call call, in FuseAttr attr)
    {
        // fuse_invalid_attr: an unknown file type or a size beyond what a file can have.
        if (!Fuse.IsValidType(attr.Mode))
        {
            throw Violation(call, $"mode 0{Convert.ToString(attr.Mode, 8)} has no valid file type");
        }

        if (attr.FileSize > long.MaxValue)
        {
            throw Violation(call, $"size {attr.FileSize} is beyond any file");
        }
    }

    private FuseEntry Hold(FuseEntry entry)
    {
        _lookups[entry.NodeId] = _lookups.GetValueOrDefault(entry.NodeId) + 1;
        return entry;
    }

    private static void CheckName(ReadOnlySpan<byte> name)
    {
        if (name.IsEmpty || name.Length > Fuse.NameMax || name.IndexOfAny((byte)'/', (byte)0) >= 0 || name is [(byte)'.'] or [(byte)'.', (byte)'.'])
        {
            throw new ArgumentException($"'{Describe(name)}' is not a file name (1 to {Fuse.NameMax} bytes, no '/' or NUL, not . or ..).", nameof(name));
        }
    }

    private static string Describe(ReadOnlySpan<byte> name) => System.Text.Encoding.UTF8.GetString(name);

    private void SendForget(ulong nodeId, ulong count)
    {
        ReapForgets();
        if (!_freeForgets.TryPop(out ulong area))
        {
            WaitForForgetProgress(0);
            area = _freeForgets.Pop();
        }

        _nextUnique += Fuse.RequestIdStep;
        var header = new FuseInHeader { Len = ForgetRequestSize, Opcode = FuseOpcode.FUSE_FORGET, Unique = _nextUnique, NodeId = nodeId, Uid = _options.Uid, Gid = _options.Gid };
        var forget = new FuseForgetIn { Nlookup = count };
        Span<byte> request = _memory.GetSpan(area, ForgetRequestSize);
        MemoryMarshal.Write(request, in header);
        MemoryMarshal.Write(request[FuseInHeader.Size..], in forget);

        // FORGET has no reply: the chain is device-readable only (5.11.6.2, on the hiprio queue).
        if (!_hiprio.TrySubmit([new DriverBuffer(area, ForgetRequestSize, false)], area))
        {
            _freeForgets.Push(area);
            throw Lose("the virtio-fs hiprio queue had no room for FORGET");
        }

        _hiprio.Notify();
    }

    /// <summary>Takes back the hiprio buffers the device is done with.</summary>
    private void ReapForgets()
    {
        try
        {
            while (_hiprio.TryTakeUsed(out object? token, out uint written))
            {
                TakeBackForget(token!, written);
            }
        }
        catch (VirtqueueException e)
        {
            throw Lose($"the virtio-fs hiprio queue is broken: {e.Message}", e);
        }
    }

    private void TakeBackForget(object token, uint written)
    {
        _freeForgets.Push((ulong)token);
        if (written != 0)
        {
            string reason = $"the virtio-fs device reports {written} bytes written for FORGET, which has no reply buffer";
            Abort(reason);
            throw new FuseProtocolException(reason);
        }
    }

    /// <summary>Waits until the device took back every FORGET (so their buffers may be freed).</summary>
    private void DrainForgets()
    {
        ReapForgets();
        while (_freeForgets.Count < _forgetSlots)
        {
            WaitForForgetProgress(_freeForgets.Count);
        }
    }

    /// <summary>Waits until the device gave back a FORGET buffer (more than <paramref name="before"/> are free).</summary>
    private void WaitForForgetProgress(int before)
    {
        long deadline = Environment.TickCount64 + (long)_options.RequestTimeout.TotalMilliseconds;
        while (_freeForgets.Count == before)
        {
            ThrowIfLost();
            long left = deadline - Environment.TickCount64;
            if (left <= 0)
            {
                throw Lose($"the virtio-fs device did not take a FORGET within {_options.RequestTimeout.TotalSeconds:0} s");
            }

            try
            {
                if (_hiprio.WaitForCompletion(TimeSpan.FromMilliseconds(Math.Min(left, (long)WaitSlice.TotalMilliseconds)), out object? token, out uint written))
                {
                    TakeBackForget(token!, written);
                }
            }
            catch (VirtqueueException e)
            {
                throw Lose($"the virtio-fs hiprio queue is broken: {e.Message}", e);
            }
        }
    }

    /// <summary>A READ put on the queue by <see cref="SubmitRead"/>, to hand to <see cref="CompleteRead"/>.</summary>
    public sealed class PendingRead
    {
        internal PendingRead(Call call, ulong offset, int size, object? state)
        {
            Call = call;
            Offset = offset;
            Size = size;
            State = state;
        }

        public ulong Offset { get; }

        public int Size { get; }

        public object? State { get; }

        internal Call Call { get; }
    }
}
