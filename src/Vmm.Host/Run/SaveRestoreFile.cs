using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Vmm.Host.Cli;
using Vmm.Virtio.Queues;

namespace Vmm.Host.Run;

/// <summary>What <c>vmm run --save</c> writes and <c>--restore</c> reads (docs/save-restore.md).</summary>
public sealed record VmSnapshot(MachineSnapshot Machine, IReadOnlyList<MemoryPage> Pages, IReadOnlyList<DeviceSnapshotRecord> Devices, WorkloadProgress Workload);

/// <summary>The VM's shape: everything a restore must build the same way.</summary>
public sealed record MachineSnapshot(ulong MemorySize, bool Pci, bool PackedRing, bool EventIndex, bool IndirectDescriptors, int BlockSize, int IoDepth);

/// <summary>One non-zero page of guest memory.</summary>
public sealed record MemoryPage(ulong Address, byte[] Data);

/// <summary>A saved queue: where its rings lie and where it stopped.</summary>
public sealed record QueueRecord(VirtqueueParams Params, VirtqueueState State);

/// <summary>
/// One device: kind and id, the features the driver negotiated, its queues, its internal state
/// (IVirtioDevice.SaveState: in-process bytes, or a vhost-user back-end's DEVICE_STATE bytes)
/// and, for vhost-user, the inflight region's bytes.
/// </summary>
public sealed record DeviceSnapshotRecord(string Kind, ushort DeviceId, ulong Features, IReadOnlyList<QueueRecord> Queues, byte[] State, byte[] Inflight)
{
    /// <summary>The inflight region's queue count and queue size (VhostUserInflight), when <see cref="Inflight"/> is not empty.</summary>
    public (ushort NumQueues, ushort QueueSize) InflightShape { get; init; }
}

/// <summary>How far the workload got: for verify, the requests completed (writes, then reads) of the total (twice the blocks).</summary>
public sealed record WorkloadProgress(RunWorkload Workload, long Done, long Total);

/// <summary>
/// The snapshot file: a 16-byte header (magic "VMMSNAP\0", u32 version, u32 section count),
/// sections of (u32 type, u32 reserved 0, u64 length, payload), then a SHA-256 of everything
/// before it. Little-endian. Every size is checked against what is left before anything is allocated.
/// </summary>
public static class SaveRestoreFile
{
    public const uint Version = 1;
    public const int PageSize = 4096;
    public const int HeaderSize = 16;
    public const int SectionHeaderSize = 16;
    public const int TrailerSize = 32;

    /// <summary>The largest snapshot file read (2 GiB - 1: one managed array).</summary>
    public const long MaxFileSize = int.MaxValue;

    private const uint SectionMachine = 1;
    private const uint SectionMemory = 2;
    private const uint SectionDevice = 3;
    private const uint SectionWorkload = 4;

    private static ReadOnlySpan<byte> Magic => "VMMSNAP\0"u8;

    /// <summary>Writes <paramref name="snapshot"/> to <paramref name="path"/> through a temporary file and a rename, so a crash leaves no half file.</summary>
    public static void Write(string path, VmSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        var body = new MemoryStream();
        var w = new BinaryWriter(body);
        w.Write(Magic);
        w.Write(Version);
        w.Write((uint)(2 + snapshot.Devices.Count + 1));
        Section(w, SectionMachine, s =>
        {
            MachineSnapshot m = snapshot.Machine;
            s.Write(m.MemorySize);
            s.Write(m.Pci);
            s.Write(m.PackedRing);
            s.Write(m.EventIndex);
            s.Write(m.IndirectDescriptors);
            s.Write(m.BlockSize);
            s.Write(m.IoDepth);
        });
        Section(w, SectionMemory, s =>
        {
            s.Write(PageSize);
            s.Write(snapshot.Pages.Count);
            foreach (MemoryPage page in snapshot.Pages)
            {
                s.Write(page.Address);
                s.Write(page.Data);
            }
        });
        foreach (DeviceSnapshotRecord d in snapshot.Devices)
        {
            Section(w, SectionDevice, s =>
            {
                byte[] kind = Encoding.UTF8.GetBytes(d.Kind);
                s.Write((byte)kind.Length);
                s.Write(kind);
                s.Write(d.DeviceId);
                s.Write(d.Features);
                s.Write(d.Queues.Count);
                foreach (QueueRecord q in d.Queues)
                {
                    s.Write(q.Params.Size);
                    s.Write(q.Params.DescriptorArea);
                    s.Write(q.Params.DriverArea);
                    s.Write(q.Params.DeviceArea);
                    s.Write(q.State.AvailableIndex);
                    s.Write(q.State.UsedIndex);
                    s.Write(q.State.AvailableWrapCounter);
                    s.Write(q.State.UsedWrapCounter);
                }

                s.Write(d.State.Length);
                s.Write(d.State);
                s.Write(d.InflightShape.NumQueues);
                s.Write(d.InflightShape.QueueSize);
                s.Write(d.Inflight.Length);
                s.Write(d.Inflight);
            });
        }

        Section(w, SectionWorkload, s =>
        {
            s.Write((byte)snapshot.Workload.Workload);
            s.Write(snapshot.Workload.Done);
            s.Write(snapshot.Workload.Total);
        });
        w.Flush();
        byte[] hash = SHA256.HashData(body.GetBuffer().AsSpan(0, (int)body.Length));
        w.Write(hash);
        w.Flush();

        string temporary = path + ".tmp";
        using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write))
        {
            file.Write(body.GetBuffer(), 0, (int)body.Length);
            file.Flush(flushToDisk: true);
        }

        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>Reads and validates a snapshot file; a missing, truncated or corrupt file is a <see cref="UsageException"/> with one sentence (exit 2).</summary>
    public static VmSnapshot Read(string path)
    {
        byte[] bytes;
        try
        {
            var info = new FileInfo(path);
            if (!info.Exists)
            {
                throw new UsageException($"The snapshot file '{path}' does not exist.");
            }

            if (info.Length > MaxFileSize)
            {
                throw new UsageException($"The snapshot file '{path}' is {info.Length} bytes, more than the {MaxFileSize} this version reads.");
            }

            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"Cannot read the snapshot file '{path}': {e.Message}", e);
        }

        try
        {
            return Parse(bytes);
        }
        catch (InvalidDataException e)
        {
            throw new UsageException($"The snapshot file '{path}' is not usable: {e.Message}", e);
        }
    }

    /// <summary>Parses snapshot bytes; <see cref="InvalidDataException"/> names the first problem.</summary>
    public static VmSnapshot Parse(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length < HeaderSize + TrailerSize)
        {
            throw new InvalidDataException($"it is {bytes.Length} bytes, shorter than a header and checksum");
        }

        if (!bytes[..8].SequenceEqual(Magic))
        {
            throw new InvalidDataException("it does not start with the snapshot magic");
        }

        uint version = BinaryPrimitives.ReadUInt32LittleEndian(bytes[8..]);
        if (version != Version)
        {
            throw new InvalidDataException($"it is version {version}; this vmm reads version {Version}");
        }

        ReadOnlySpan<byte> body = bytes[..^TrailerSize];
        if (!SHA256.HashData(body).AsSpan().SequenceEqual(bytes[^TrailerSize..]))
        {
            throw new InvalidDataException("its checksum does not match (truncated or corrupt)");
        }

        uint sections = BinaryPrimitives.ReadUInt32LittleEndian(bytes[12..]);
        var reader = new SpanReader(body[HeaderSize..]);
        MachineSnapshot? machine = null;
        List<MemoryPage>? pages = null;
        var devices = new List<DeviceSnapshotRecord>();
        WorkloadProgress? workload = null;
        for (uint i = 0; i < sections; i++)
        {
            uint type = reader.U32();
            reader.U32();
            ulong length = reader.U64();
            var s = new SpanReader(reader.Bytes(length, "section"));
            switch (type)
            {
                case SectionMachine:
                    machine = new MachineSnapshot(s.U64(), s.Bool(), s.Bool(), s.Bool(), s.Bool(), s.I32(), s.I32());
                    break;
                case SectionMemory:
                    pages = ReadPages(ref s, machine);
                    break;
                case SectionDevice:
                    devices.Add(ReadDevice(ref s));
                    break;
                case SectionWorkload:
                    workload = new WorkloadProgress((RunWorkload)s.U8(), s.I64(), s.I64());
                    break;
                default:
                    throw new InvalidDataException($"it has a section of unknown type {type}");
            }

            if (!s.AtEnd)
            {
                throw new InvalidDataException($"section type {type} has {s.Remaining} bytes left over");
            }
        }

        if (!reader.AtEnd)
        {
            throw new InvalidDataException($"{reader.Remaining} bytes follow the last section");
        }

        if (machine is null || pages is null || workload is null || devices.Count == 0)
        {
            throw new InvalidDataException("a machine, memory, device or workload section is missing");
        }

        if (workload.Done < 0 || workload.Done > workload.Total)
        {
            throw new InvalidDataException($"its workload progress {workload.Done} of {workload.Total} is impossible");
        }

        return new VmSnapshot(machine, pages, devices, workload);
    }

    private static List<MemoryPage> ReadPages(ref SpanReader s, MachineSnapshot? machine)
    {
        if (machine is null)
        {
            throw new InvalidDataException("the memory section comes before the machine section");
        }

        int pageSize = s.I32();
        int count = s.I32();
        if (pageSize != PageSize || count < 0 || (ulong)count > machine.MemorySize / PageSize || (long)count * (8 + PageSize) > s.Remaining)
        {
            throw new InvalidDataException($"its memory section announces {count} pages of {pageSize} bytes, which do not fit");
        }

        var pages = new List<MemoryPage>(count);
        for (int i = 0; i < count; i++)
        {
            ulong address = s.U64();
            if (address % PageSize != 0 || address > machine.MemorySize - PageSize)
            {
                throw new InvalidDataException($"a memory page lies at 0x{address:x}, outside {machine.MemorySize} bytes of guest memory");
            }

            pages.Add(new MemoryPage(address, s.Bytes(PageSize, "memory page").ToArray()));
        }

        return pages;
    }

    private static DeviceSnapshotRecord ReadDevice(ref SpanReader s)
    {
        int kindLength = s.U8();
        string kind = Encoding.UTF8.GetString(s.Bytes((ulong)kindLength, "device kind"));
        ushort id = s.U16();
        ulong features = s.U64();
        int queueCount = s.I32();
        if (queueCount is < 0 or > 256 || (long)queueCount * 32 > s.Remaining)
        {
            throw new InvalidDataException($"a device announces {queueCount} queues, which do not fit");
        }

        var queues = new List<QueueRecord>(queueCount);
        for (int i = 0; i < queueCount; i++)
        {
            var p = new VirtqueueParams(s.U16(), s.U64(), s.U64(), s.U64());
            var state = new VirtqueueState(s.U16(), s.U16(), s.Bool(), s.Bool());
            queues.Add(new QueueRecord(p, state));
        }

        byte[] deviceState = s.Bytes((ulong)s.I32Length("device state"), "device state").ToArray();
        (ushort, ushort) shape = (s.U16(), s.U16());
        byte[] inflight = s.Bytes((ulong)s.I32Length("inflight region"), "inflight region").ToArray();
        return new DeviceSnapshotRecord(kind, id, features, queues, deviceState, inflight) { InflightShape = shape };
    }

    private static void Section(BinaryWriter w, uint type, Action<BinaryWriter> write)
    {
        var payload = new MemoryStream();
        using (var s = new BinaryWriter(payload, Encoding.UTF8, leaveOpen: true))
        {
            write(s);
        }

        w.Write(type);
        w.Write(0u);
        w.Write((ulong)payload.Length);
        w.Write(payload.GetBuffer(), 0, (int)payload.Length);
    }

    /// <summary>Little-endian reads that throw <see cref="InvalidDataException"/> instead of running past the end.</summary>
    private ref struct SpanReader(ReadOnlySpan<byte> data)
    {
        private ReadOnlySpan<byte> _data = data;

        public readonly bool AtEnd => _data.IsEmpty;

        public readonly int Remaining => _data.Length;

        public ReadOnlySpan<byte> Bytes(ulong count, string what)
        {
            if (count > (ulong)_data.Length)
            {
                throw new InvalidDataException($"its {what} needs {count} bytes but only {_data.Length} remain (truncated)");
            }

            ReadOnlySpan<byte> result = _data[..(int)count];
            _data = _data[(int)count..];
            return result;
        }

        public byte U8() => Bytes(1, "field")[0];

        public bool Bool() => U8() switch
        {
            0 => false,
            1 => true,
            byte b => throw new InvalidDataException($"a flag holds {b}, not 0 or 1"),
        };

        public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Bytes(2, "field"));

        public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4, "field"));

        public int I32() => BinaryPrimitives.ReadInt32LittleEndian(Bytes(4, "field"));

        public long I64() => BinaryPrimitives.ReadInt64LittleEndian(Bytes(8, "field"));

        public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Bytes(8, "field"));

        public int I32Length(string what)
        {
            int n = I32();
            if (n < 0 || n > _data.Length)
            {
                throw new InvalidDataException($"its {what} announces {n} bytes but only {_data.Length} remain");
            }

            return n;
        }
    }
}
