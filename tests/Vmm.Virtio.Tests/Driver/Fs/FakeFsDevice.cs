using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Text;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Driver.Fs;

/// <summary>One FUSE request as the fake device read it off a queue.</summary>
public sealed record FuseRequestSeen(int Queue, FuseOpcode Opcode, ulong Unique, ulong NodeId, byte[] Args, int WritableCapacity)
{
    public T Read<T>(int offset = 0)
        where T : unmanaged => MemoryMarshal.Read<T>(Args.AsSpan(offset));

    /// <summary>The NUL-terminated name starting at <paramref name="offset"/>.</summary>
    public string Name(int offset = 0)
    {
        int end = Array.IndexOf(Args, (byte)0, offset);
        return Encoding.UTF8.GetString(Args, offset, (end < 0 ? Args.Length : end) - offset);
    }
}

/// <summary>What the fake writes back: the whole reply (out header and payload), and optionally a used length that lies.</summary>
public sealed record FakeFuseReply(byte[] Bytes, uint? ReportedWritten = null, bool Hold = false)
{
    /// <summary>No answer until the device is disposed.</summary>
    public static readonly FakeFuseReply Never = new([], Hold: true);

    public static FakeFuseReply Ok(ulong unique, ReadOnlySpan<byte> payload) => Raw((uint)(FuseOutHeader.Size + payload.Length), 0, unique, payload);

    public static FakeFuseReply Ok<T>(ulong unique, T payload)
        where T : unmanaged => Ok(unique, MemoryMarshal.AsBytes(new ReadOnlySpan<T>(ref payload)));

    public static FakeFuseReply Error(ulong unique, int errno) => Raw(FuseOutHeader.Size, -errno, unique, []);

    public static FakeFuseReply Raw(uint len, int error, ulong unique, ReadOnlySpan<byte> payload)
    {
        byte[] bytes = new byte[FuseOutHeader.Size + payload.Length];
        var header = new FuseOutHeader { Len = len, Error = error, Unique = unique };
        MemoryMarshal.Write(bytes, in header);
        payload.CopyTo(bytes.AsSpan(FuseOutHeader.Size));
        return new FakeFuseReply(bytes);
    }
}

/// <summary>
/// An in-process virtio-fs device for driver tests: hiprio and one request queue, a tag in its
/// config, and a small in-memory file system (<see cref="MemFs"/>) answering FUSE. A test can
/// replace any reply (<see cref="Intercept"/>) to send the driver a malformed one.
/// </summary>
internal sealed class FakeFsDevice : VirtioDeviceBase
{
    private readonly ManualResetEventSlim _released = new();
    private readonly string _tag;

    public FakeFsDevice(string tag = "fake", ushort queueSize = 64)
        : base(VirtioDeviceId.FileSystem, SupportedRingFeatures, 2, queueSize)
    {
        _tag = tag;
    }

    public MemFs Fs { get; } = new();

    /// <summary>Returns a reply to send instead of the file system's (null: the file system answers).</summary>
    public Func<FuseRequestSeen, FakeFuseReply?>? Intercept { get; set; }

    public ConcurrentQueue<FuseRequestSeen> Seen { get; } = new();

    public override int ConfigSize => VirtioFsConfig.Size;

    public override void ReadConfig(uint offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[VirtioFsConfig.Size];
        new VirtioFsConfig(_tag, 1, true).Write(config);
        data.Clear();
        if (offset < config.Length)
        {
            config[(int)offset..Math.Min(config.Length, (int)offset + data.Length)].CopyTo(data);
        }
    }

    public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
    }

    protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory)
    {
        byte[] readable = Gather(chain, memory);
        FuseInHeader header = MemoryMarshal.Read<FuseInHeader>(readable);
        var request = new FuseRequestSeen(queueIndex, header.Opcode, header.Unique, header.NodeId, readable[FuseInHeader.Size..(int)header.Len], (int)chain.WritableLength);
        Seen.Enqueue(request);
        if (header.Opcode == FuseOpcode.FUSE_FORGET)
        {
            Fs.Forget(header.NodeId, request.Read<FuseForgetIn>().Nlookup);
            return 0;
        }

        FakeFuseReply reply = Intercept?.Invoke(request) ?? Fs.Handle(request);
        if (reply.Hold)
        {
            _released.Wait();
            return 0;
        }

        uint written = Scatter(chain, memory, reply.Bytes);
        return reply.ReportedWritten ?? written;
    }

    /// <summary>Lets held requests (<see cref="FakeFuseReply.Never"/>) end: before a reset or disposal, which wait for the queue workers.</summary>
    public void ReleaseHeld() => _released.Set();

    protected override void Dispose(bool disposing)
    {
        _released.Set();
        base.Dispose(disposing);
    }

    private static byte[] Gather(DescriptorChain chain, GuestMemory memory)
    {
        byte[] bytes = new byte[chain.ReadableLength];
        int at = 0;
        foreach (DescriptorSegment s in chain.Segments)
        {
            if (!s.IsDeviceWritable)
            {
                memory.Read(s.Address, bytes.AsSpan(at, (int)s.Length));
                at += (int)s.Length;
            }
        }

        return bytes;
    }

    private static uint Scatter(DescriptorChain chain, GuestMemory memory, byte[] bytes)
    {
        int at = 0;
        foreach (DescriptorSegment s in chain.Segments)
        {
            if (s.IsDeviceWritable && at < bytes.Length)
            {
                int n = Math.Min((int)s.Length, bytes.Length - at);
                memory.Write(s.Address, bytes.AsSpan(at, n));
                at += n;
            }
        }

        return (uint)at;
    }
}

/// <summary>
/// A small FUSE file system in memory with virtiofsd's habits: lookup counts per node (each
/// LOOKUP, CREATE, MKDIR and READDIRPLUS entry one; FORGET takes them back), UNLINK, RMDIR and
/// RENAME only of names the driver holds a lookup on (the C virtiofsd answers EIO otherwise).
/// </summary>
internal sealed class MemFs
{
    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, Node> _nodes = [];
    private ulong _nextNode = 2;

    public MemFs()
    {
        _nodes[Fuse.RootId] = new Node(Fuse.RootId, true);
    }

    public uint MaxWrite { get; set; } = 64 * 1024;

    public ushort MaxPages { get; set; } = 4;

    public uint GrantedFlags { get; set; } = Fuse.FUSE_DO_READDIRPLUS | Fuse.FUSE_MAX_PAGES | Fuse.FUSE_BIG_WRITES;

    /// <summary>Lookups the driver holds per node id (never negative: a FORGET of more is recorded in <see cref="Errors"/>).</summary>
    public Dictionary<ulong, ulong> Lookups { get; } = [];

    public List<string> Errors { get; } = [];

    public bool Destroyed { get; private set; }

    public void AddFile(string path, byte[] content) => Add(path, false).Data = [.. content];

    public void AddDirectory(string path) => Add(path, true);

    public byte[]? FileContent(string path)
    {
        lock (_lock)
        {
            return Find(path) is { IsDirectory: false } node ? [.. node.Data] : null;
        }
    }

    public bool Exists(string path)
    {
        lock (_lock)
        {
            return Find(path) is not null;
        }
    }

    public void Forget(ulong node, ulong count)
    {
        lock (_lock)
        {
            ulong held = Lookups.GetValueOrDefault(node);
            if (count > held)
            {
                Errors.Add($"FORGET {count} of node {node}, which has {held}");
            }

            Lookups[node] = held - Math.Min(held, count);
            if (Lookups[node] == 0)
            {
                Lookups.Remove(node);
            }
        }
    }

    public FakeFuseReply Handle(FuseRequestSeen r)
    {
        lock (_lock)
        {
            try
            {
                return HandleLocked(r);
            }
            catch (ErrnoException e)
            {
                return FakeFuseReply.Error(r.Unique, e.Errno);
            }
        }
    }

    private FakeFuseReply HandleLocked(FuseRequestSeen r)
    {
        switch (r.Opcode)
        {
            case FuseOpcode.FUSE_INIT:
                FuseInitIn init = r.Read<FuseInitIn>();
                return FakeFuseReply.Ok(r.Unique, new FuseInitOut { Major = 7, Minor = 38, Flags = init.Flags & GrantedFlags, MaxWrite = MaxWrite, MaxPages = MaxPages });
            case FuseOpcode.FUSE_LOOKUP:
                return FakeFuseReply.Ok(r.Unique, Entry(Child(Get(r.NodeId), r.Name()), hold: true));
            case FuseOpcode.FUSE_GETATTR:
                return FakeFuseReply.Ok(r.Unique, new FuseAttrOut { Attr = Get(r.NodeId).Attr });
            case FuseOpcode.FUSE_OPENDIR or FuseOpcode.FUSE_OPEN:
                return FakeFuseReply.Ok(r.Unique, new FuseOpenOut { Fh = 1000 + Get(r.NodeId).Id });
            case FuseOpcode.FUSE_READDIR or FuseOpcode.FUSE_READDIRPLUS:
                return FakeFuseReply.Ok(r.Unique, List(Get(r.NodeId), r.Read<FuseReadIn>(), r.Opcode == FuseOpcode.FUSE_READDIRPLUS));
            case FuseOpcode.FUSE_READ:
                FuseReadIn read = r.Read<FuseReadIn>();
                Node file = Get(r.NodeId);
                int from = (int)Math.Min(read.Offset, (ulong)file.Data.Count);
                int count = Math.Min((int)read.ReadSize, file.Data.Count - from);
                return FakeFuseReply.Ok(r.Unique, file.Data.GetRange(from, count).ToArray());
            case FuseOpcode.FUSE_WRITE:
                FuseWriteIn write = r.Read<FuseWriteIn>();
                Node target = Get(r.NodeId);
                byte[] data = r.Args[FuseWriteIn.Size..(FuseWriteIn.Size + (int)write.WriteSize)];
                while (target.Data.Count < (int)write.Offset + data.Length)
                {
                    target.Data.Add(0);
                }

                for (int i = 0; i < data.Length; i++)
                {
                    target.Data[(int)write.Offset + i] = data[i];
                }

                return FakeFuseReply.Ok(r.Unique, new FuseWriteOut { WriteSize = write.WriteSize });
            case FuseOpcode.FUSE_RELEASE or FuseOpcode.FUSE_RELEASEDIR or FuseOpcode.FUSE_FLUSH or FuseOpcode.FUSE_FSYNC:
                Get(r.NodeId);
                return FakeFuseReply.Ok(r.Unique, []);
            case FuseOpcode.FUSE_CREATE:
                Node created = NewChild(Get(r.NodeId), r.Name(FuseCreateIn.Size), false);
                byte[] reply = [.. Bytes(Entry(created, hold: true)), .. Bytes(new FuseOpenOut { Fh = 1000 + created.Id })];
                return FakeFuseReply.Ok(r.Unique, reply);
            case FuseOpcode.FUSE_MKDIR:
                return FakeFuseReply.Ok(r.Unique, Entry(NewChild(Get(r.NodeId), r.Name(FuseMkdirIn.Size), true), hold: true));
            case FuseOpcode.FUSE_UNLINK or FuseOpcode.FUSE_RMDIR:
                Node parent = Get(r.NodeId);
                Node victim = Held(Child(parent, r.Name()));
                if (victim.IsDirectory != (r.Opcode == FuseOpcode.FUSE_RMDIR))
                {
                    throw new ErrnoException(victim.IsDirectory ? 21 : 20);
                }

                if (victim.Children.Count > 0)
                {
                    throw new ErrnoException(39);
                }

                parent.Children.Remove(victim.Name);
                return FakeFuseReply.Ok(r.Unique, []);
            case FuseOpcode.FUSE_RENAME:
                Node from2 = Get(r.NodeId);
                string oldName = r.Name(FuseRenameIn.Size);
                string newName = r.Name(FuseRenameIn.Size + Encoding.UTF8.GetByteCount(oldName) + 1);
                Node moving = Held(Child(from2, oldName));
                Node to = Get(r.Read<FuseRenameIn>().NewDir);
                from2.Children.Remove(oldName);
                moving.Name = newName;
                to.Children[newName] = moving;
                return FakeFuseReply.Ok(r.Unique, []);
            case FuseOpcode.FUSE_STATFS:
                return FakeFuseReply.Ok(r.Unique, new FuseStatfsOut { Blocks = 1000, Bfree = 500, Bavail = 500, Bsize = 4096, NameLen = 255, Frsize = 4096 });
            case FuseOpcode.FUSE_DESTROY:
                Destroyed = true;
                return FakeFuseReply.Ok(r.Unique, []);
            default:
                throw new ErrnoException(38);
        }
    }

    private Node Add(string path, bool directory)
    {
        lock (_lock)
        {
            Node at = _nodes[Fuse.RootId];
            string[] parts = path.Split('/');
            for (int i = 0; i < parts.Length - 1; i++)
            {
                at = at.Children.TryGetValue(parts[i], out Node? next) ? next : NewChild(at, parts[i], true);
            }

            return NewChild(at, parts[^1], directory);
        }
    }

    private Node? Find(string path)
    {
        Node? at = _nodes[Fuse.RootId];
        foreach (string part in path.Split('/'))
        {
            if (at is null || !at.Children.TryGetValue(part, out at))
            {
                return null;
            }
        }

        return at;
    }

    private Node NewChild(Node parent, string name, bool directory)
    {
        if (parent.Children.ContainsKey(name))
        {
            throw new ErrnoException(17);
        }

        var node = new Node(_nextNode++, directory) { Name = name };
        _nodes[node.Id] = node;
        parent.Children[name] = node;
        return node;
    }

    private Node Get(ulong id) => _nodes.TryGetValue(id, out Node? node) ? node : throw new ErrnoException(9);

    private static Node Child(Node parent, string name) => parent.Children.TryGetValue(name, out Node? node) ? node : throw new ErrnoException(2);

    private Node Held(Node node)
    {
        if (Lookups.GetValueOrDefault(node.Id) == 0)
        {
            throw new ErrnoException(5); // as the C virtiofsd: a name the driver holds no lookup on
        }

        return node;
    }

    private FuseEntryOut Entry(Node node, bool hold)
    {
        if (hold)
        {
            Lookups[node.Id] = Lookups.GetValueOrDefault(node.Id) + 1;
        }

        return new FuseEntryOut { NodeId = node.Id, Attr = node.Attr };
    }

    private byte[] List(Node dir, FuseReadIn read, bool plus)
    {
        var names = new List<(string Name, Node? Node)> { (".", null), ("..", null) };
        names.AddRange(dir.Children.OrderBy(c => c.Key, StringComparer.Ordinal).Select(c => (c.Key, (Node?)c.Value)));
        var output = new List<byte>();
        for (int i = (int)read.Offset; i < names.Count; i++)
        {
            byte[] name = Encoding.UTF8.GetBytes(names[i].Name);
            int header = plus ? FuseDirentPlus.Size : FuseDirent.Size;
            int record = Fuse.DirentAlign(header + name.Length);
            if (output.Count + record > read.ReadSize)
            {
                break;
            }

            var dirent = new FuseDirent { Ino = names[i].Node?.Id ?? 1, Off = (ulong)(i + 1), NameLen = (uint)name.Length, Type = names[i].Node is { IsDirectory: false } ? 8u : 4u };
            if (plus)
            {
                output.AddRange(Bytes(names[i].Node is { } node ? Entry(node, hold: true) : default));
            }

            output.AddRange(Bytes(dirent));
            output.AddRange(name);
            output.AddRange(new byte[record - header - name.Length]);
        }

        return [.. output];
    }

    private static byte[] Bytes<T>(T value)
        where T : unmanaged => MemoryMarshal.AsBytes(new ReadOnlySpan<T>(ref value)).ToArray();

    private sealed class ErrnoException(int errno) : Exception
    {
        public int Errno { get; } = errno;
    }

    private sealed class Node(ulong id, bool directory)
    {
        public ulong Id { get; } = id;

        public bool IsDirectory { get; } = directory;

        public string Name { get; set; } = string.Empty;

        public List<byte> Data { get; set; } = [];

        public Dictionary<string, Node> Children { get; } = new(StringComparer.Ordinal);

        public FuseAttr Attr => new()
        {
            Ino = Id,
            Mode = IsDirectory ? Fuse.S_IFDIR | 0x1ED : Fuse.S_IFREG | 0x1A4,
            FileSize = (ulong)Data.Count,
            Nlink = 1,
        };
    }
}
