using System.Runtime.InteropServices;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Driver.Fs;

/// <summary>What a <see cref="VirtioFsSession"/> may use and how long it waits.</summary>
public sealed record VirtioFsSessionOptions
{
    /// <summary>How long one request may take before the session counts as lost.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Requests in flight at once on the request queue (each has its own buffers in guest memory).</summary>
    public int MaxRequestsInFlight { get; init; } = 4;

    /// <summary>Largest data buffer of one READ, WRITE or READDIRPLUS; the device's limits may lower it.</summary>
    public int MaxIoSize { get; init; } = 1 << 20;

    /// <summary>fuse_in_header.uid and gid of every request: the guest's caller, root here.</summary>
    public uint Uid { get; init; }

    public uint Gid { get; init; }
}

/// <summary>
/// The guest side of a virtio-fs device (virtio 1.2, 5.11): a FUSE session over the hiprio queue
/// (FORGET) and one request queue (everything else), as Linux's virtio_fs and fuse modules do it.
/// Every reply is checked before it is used: the device (a vhost-user back-end in another
/// process) is not trusted. See VirtioFsSession.Operations.cs for the FUSE operations.
/// </summary>
/// <remarks>
/// <para>A request is one descriptor chain (5.11.6): device-readable fuse_in_header, arguments and
/// write data, then device-writable fuse_out_header (exactly 16 bytes, or with the fixed reply
/// structure right after it) and the read buffer. The writable part is exactly as long as the
/// largest valid reply, so a device cannot write past what the driver expects.</para>
/// <para>Not thread-safe: one thread drives a session; it may have several requests in flight
/// (<see cref="SubmitRead"/> / <see cref="CompleteRead"/>).</para>
/// <para>A protocol violation or a timeout loses the session for good (every later call throws
/// <see cref="FuseSessionLostException"/>); an error reply (errno) is the request's own outcome.</para>
/// </remarks>
public sealed partial class VirtioFsSession : IDisposable
{
    /// <summary>Readable part of a slot's control area: header, arguments and up to two names (RENAME).</summary>
    private const int InAreaSize = 3072;

    /// <summary>Writable part of a slot's control area: out header and the largest fixed reply (CREATE: 144 bytes).</summary>
    private const int OutAreaSize = 1024;

    private const int ControlAreaSize = InAreaSize + OutAreaSize;
    private const int ForgetRequestSize = FuseInHeader.Size + FuseForgetIn.Size;

    /// <summary>How often a waiting thread looks whether the session was aborted.</summary>
    private static readonly TimeSpan WaitSlice = TimeSpan.FromMilliseconds(100);

    private readonly VirtioDriverQueue _hiprio;
    private readonly VirtioDriverQueue _requests;
    private readonly GuestMemory _memory;
    private readonly GuestMemoryAllocator _allocator;
    private readonly VirtioFsSessionOptions _options;
    private readonly Slot[] _slots;
    private readonly Stack<Slot> _freeSlots;
    private readonly ulong _forgetArea;
    private readonly Stack<ulong> _freeForgets;
    private readonly int _forgetSlots;
    private readonly Dictionary<ulong, ulong> _lookups = [];
    private ulong _nextUnique;
    private string? _lost;
    private bool _disposed;

    public VirtioFsSession(VirtqueuePair queues, GuestMemory memory, GuestMemoryAllocator allocator, VirtioFsSessionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(queues);
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(allocator);
        _options = options ?? new VirtioFsSessionOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(_options.MaxRequestsInFlight, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(_options.MaxIoSize, 4096);
        _hiprio = queues.Hiprio;
        _requests = queues.Request;
        _memory = memory;
        _allocator = allocator;

        // A chain is at most 4 descriptors; without indirect tables it takes that many ring slots.
        int fit = Math.Max(1, _requests.Queue.Size / 4);
        int count = Math.Min(_options.MaxRequestsInFlight, fit);
        _slots = new Slot[count];
        _freeSlots = new Stack<Slot>(count);
        try
        {
            for (int i = count - 1; i >= 0; i--)
            {
                _slots[i] = new Slot(allocator.Allocate(ControlAreaSize, 64), allocator.Allocate((ulong)_options.MaxIoSize, 4096));
                _freeSlots.Push(_slots[i]);
            }

            _forgetSlots = Math.Max(1, Math.Min(64, (int)_hiprio.Queue.Size));
            _forgetArea = allocator.Allocate((ulong)(_forgetSlots * 64), 64);
        }
        catch
        {
            FreeSlots();
            throw;
        }

        _freeForgets = new Stack<ulong>(_forgetSlots);
        for (int i = _forgetSlots - 1; i >= 0; i--)
        {
            _freeForgets.Push(_forgetArea + (ulong)(i * 64));
        }

        _nextUnique = 0;
    }

    /// <summary>What FUSE_INIT negotiated; null before <see cref="Initialize"/>.</summary>
    public FuseInitResult? Init { get; private set; }

    /// <summary>Requests that may be in flight at once on the request queue.</summary>
    public int MaxRequestsInFlight => _slots.Length;

    /// <summary>Why the session was lost, or null while it is usable.</summary>
    public string? LostReason => Volatile.Read(ref _lost);

    /// <summary>Node ids the driver holds lookups on (it owes each a FORGET).</summary>
    public int NodesHeld => _lookups.Count;

    /// <summary>
    /// Ends the session from any thread (the back-end went away): waits in progress end with
    /// <see cref="FuseSessionLostException"/> within <c>100 ms</c>, and no request is sent again.
    /// </summary>
    public void Abort(string reason)
    {
        ArgumentNullException.ThrowIfNull(reason);
        Interlocked.CompareExchange(ref _lost, reason, null);
    }

    /// <summary>
    /// FORGETs every node still held, sends FUSE_DESTROY (as Linux does at unmount) and frees the
    /// session's guest memory. After a loss nothing is sent and the buffers stay allocated: the
    /// device may still write into them.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        try
        {
            if (LostReason is null && Init is not null)
            {
                ForgetAll();
                Complete(Submit(FuseOpcode.FUSE_DESTROY, Fuse.RootId, [], [], [], ReplyShape.Exact(0)));
                DrainForgets();
            }
        }
        catch (FuseException)
        {
            // The session ended badly (a lost session keeps its buffers below); what is held is the device's to drop.
        }

        _disposed = true;
        if (LostReason is null)
        {
            FreeSlots();
        }
    }

    private void FreeSlots()
    {
        foreach (Slot? slot in _slots)
        {
            if (slot is not null)
            {
                _allocator.Free(slot.Control);
                _allocator.Free(slot.Data);
            }
        }

        if (_forgetArea != 0)
        {
            _allocator.Free(_forgetArea);
        }
    }

    private void ThrowIfLost()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (LostReason is { } reason)
        {
            throw new FuseSessionLostException(reason);
        }
    }

    /// <summary>Marks the session lost and returns the exception to throw.</summary>
    private FuseSessionLostException Lose(string reason, Exception? inner = null)
    {
        Abort(reason);
        return new FuseSessionLostException(LostReason!, inner);
    }

    private FuseProtocolException Violation(Call call, string what)
    {
        string reason = $"the virtio-fs device sent a malformed reply to {call.Opcode} (unique {call.Unique}): {what}";
        Abort(reason);
        return new FuseProtocolException(reason);
    }

    /// <summary>
    /// Puts one request on the request queue. <paramref name="args"/> follow the in header, then
    /// the names (each NUL-terminated, as FUSE wants them), then <paramref name="writeData"/>
    /// (copied into the slot's data buffer). The writable part is the out header plus
    /// <paramref name="reply"/>'s fixed size, then <paramref name="readSize"/> bytes of the slot's
    /// data buffer when the reply carries data (READ, READDIR, READDIRPLUS).
    /// </summary>
    private Call Submit(FuseOpcode opcode, ulong nodeId, ReadOnlySpan<byte> args, ReadOnlySpan<byte> name1, ReadOnlySpan<byte> name2, ReplyShape reply, ReadOnlySpan<byte> writeData = default, int readSize = 0)
    {
        ThrowIfLost();
        var data = writeData.IsEmpty ? DataPart.In(readSize) : DataPart.Out(writeData.Length);
        int inLength = FuseInHeader.Size + args.Length + (name1.IsEmpty ? 0 : name1.Length + 1) + (name2.IsEmpty ? 0 : name2.Length + 1);
        if (inLength > InAreaSize || FuseOutHeader.Size + reply.Fixed > OutAreaSize || data.Length > _options.MaxIoSize || (readSize > 0 && !writeData.IsEmpty))
        {
            throw new ArgumentException($"{opcode}: the request does not fit the session's buffers.");
        }

        Slot slot = TakeSlot();
        _nextUnique += Fuse.RequestIdStep;
        var call = new Call(opcode, _nextUnique, slot, reply, data);
        writeData.CopyTo(_memory.GetSpan(slot.Data, writeData.Length));
        Span<byte> request = _memory.GetSpan(slot.Control, inLength);
        var header = new FuseInHeader
        {
            Len = (uint)(inLength + (data.DeviceWritable ? 0 : data.Length)),
            Opcode = opcode,
            Unique = call.Unique,
            NodeId = nodeId,
            Uid = _options.Uid,
            Gid = _options.Gid,
        };
        MemoryMarshal.Write(request, in header);
        int at = FuseInHeader.Size;
        args.CopyTo(request[at..]);
        at += args.Length;
        at = AppendName(request, at, name1);
        AppendName(request, at, name2);

        // The out header is cleared so that a device that reports bytes it never wrote is caught by the unique check.
        _memory.Clear(slot.Control + InAreaSize, (ulong)(FuseOutHeader.Size + reply.Fixed));
        Span<DriverBuffer> chain = stackalloc DriverBuffer[4];
        int n = 0;
        chain[n++] = new DriverBuffer(slot.Control, (uint)inLength, false);
        if (data.Length > 0 && !data.DeviceWritable)
        {
            chain[n++] = new DriverBuffer(slot.Data, (uint)data.Length, false);
        }

        chain[n++] = new DriverBuffer(slot.Control + InAreaSize, (uint)(FuseOutHeader.Size + reply.Fixed), true);
        if (data.Length > 0 && data.DeviceWritable)
        {
            chain[n++] = new DriverBuffer(slot.Data, (uint)data.Length, true);
        }

        if (!_requests.TrySubmit(chain[..n], call))
        {
            _freeSlots.Push(slot);
            throw Lose($"the virtio-fs request queue had no room for {opcode} with {_slots.Length - _freeSlots.Count} requests in flight");
        }

        _requests.Notify();
        return call;
    }

    private static int AppendName(Span<byte> request, int at, ReadOnlySpan<byte> name)
    {
        if (name.IsEmpty)
        {
            return at;
        }

        name.CopyTo(request[at..]);
        request[at + name.Length] = 0;
        return at + name.Length + 1;
    }

    /// <summary>Waits for <paramref name="call"/>, validates its reply and gives its slot back; throws on an error reply.</summary>
    private Call Complete(Call call, string? subject = null)
    {
        WaitFor(call);
        _freeSlots.Push(call.Slot);
        if (call.Error != 0)
        {
            throw new FuseErrorException(call.Opcode, call.Error, subject);
        }

        return call;
    }

    /// <summary>As <see cref="Complete"/>, but returns the errno (0 on success) instead of throwing it.</summary>
    private int CompleteWithErrno(Call call)
    {
        WaitFor(call);
        _freeSlots.Push(call.Slot);
        return call.Error;
    }

    private Slot TakeSlot()
    {
        if (_freeSlots.TryPop(out Slot? slot))
        {
            return slot;
        }

        throw new InvalidOperationException($"All {_slots.Length} requests of the session are in flight: complete one first.");
    }

    private void WaitFor(Call call)
    {
        long deadline = Environment.TickCount64 + (long)_options.RequestTimeout.TotalMilliseconds;
        while (!call.Completed)
        {
            ThrowIfLost();
            long left = deadline - Environment.TickCount64;
            if (left <= 0)
            {
                throw Lose($"the virtio-fs device did not answer {call.Opcode} within {_options.RequestTimeout.TotalSeconds:0} s");
            }

            object? token;
            uint written;
            bool got;
            try
            {
                got = _requests.WaitForCompletion(TimeSpan.FromMilliseconds(Math.Min(left, (long)WaitSlice.TotalMilliseconds)), out token, out written);
            }
            catch (VirtqueueException e)
            {
                throw Lose($"the virtio-fs request queue is broken: {e.Message}", e);
            }

            if (got)
            {
                Validate((Call)token!, written);
            }
        }
    }

    /// <summary>
    /// The checks every reply passes before anything in it is used (fs/fuse/dev.c and
    /// fs/fuse/virtio_fs.c do the same or less): the device wrote at least an out header and no more
    /// than the writable buffers hold; len says exactly what it wrote; the unique id is the
    /// request's; error is 0 or a negated errno from 1 to 511, and an error reply is the bare
    /// header; a successful reply has the size its opcode allows.
    /// </summary>
    private void Validate(Call call, uint written)
    {
        call.Completed = true;
        int capacity = FuseOutHeader.Size + call.Reply.Fixed + (call.Data.DeviceWritable ? call.Data.Length : 0);
        if (written < FuseOutHeader.Size)
        {
            throw Violation(call, $"{written} bytes, shorter than the 16-byte fuse_out_header");
        }

        if (written > capacity)
        {
            throw Violation(call, $"the device reports {written} bytes written into {capacity} bytes of buffers");
        }

        FuseOutHeader header = MemoryMarshal.Read<FuseOutHeader>(_memory.GetSpan(call.Slot.Control + InAreaSize, FuseOutHeader.Size));
        if (header.Unique != call.Unique)
        {
            throw Violation(call, $"it carries unique id {header.Unique}");
        }

        if (header.Len != written)
        {
            throw Violation(call, $"fuse_out_header.len is {header.Len} but the device wrote {written} bytes");
        }

        if (header.Error > 0 || header.Error < -Fuse.MaxErrno)
        {
            throw Violation(call, $"error {header.Error} is not 0 or a negated errno from 1 to {Fuse.MaxErrno}");
        }

        int payload = (int)written - FuseOutHeader.Size;
        if (header.Error != 0)
        {
            if (payload != 0)
            {
                throw Violation(call, $"an error reply ({Errno.Name(-header.Error)}) carries {payload} bytes of payload");
            }

            call.Error = -header.Error;
            return;
        }

        int fixedPart = Math.Min(payload, call.Reply.Fixed);
        if (call.Reply.Kind == ReplyKind.Exact && payload != call.Reply.Fixed)
        {
            throw Violation(call, $"{payload} bytes of payload where {call.Reply.Fixed} are due");
        }

        call.PayloadLength = payload;
        call.FixedLength = fixedPart;
    }

    private ReadOnlySpan<byte> FixedReply(Call call) => _memory.GetSpan(call.Slot.Control + InAreaSize + FuseOutHeader.Size, call.FixedLength);

    private T ReadReply<T>(Call call, int offset = 0)
        where T : unmanaged => MemoryMarshal.Read<T>(FixedReply(call)[offset..]);

    private static ReadOnlySpan<byte> AsBytes<T>(ref T value)
        where T : unmanaged => MemoryMarshal.AsBytes(new Span<T>(ref value));

    /// <summary>The queues a session drives: hiprio (queue 0) and the first request queue (queue 1).</summary>
    public sealed record VirtqueuePair(VirtioDriverQueue Hiprio, VirtioDriverQueue Request);

    /// <summary>One request slot: a control area (in part, then out part) and a data buffer in guest memory.</summary>
    internal sealed record Slot(ulong Control, ulong Data);

    /// <summary>The slot's data buffer in a request: <paramref name="Length"/> bytes, written by the driver (WRITE) or by the device (READ, READDIRPLUS).</summary>
    internal readonly record struct DataPart(int Length, bool DeviceWritable)
    {
        public static DataPart Out(int length) => new(length, false);

        public static DataPart In(int length) => new(length, true);
    }

    internal enum ReplyKind
    {
        /// <summary>A successful reply is exactly the fixed structure (or nothing).</summary>
        Exact,

        /// <summary>A successful reply is up to the data buffer's length (READ, READDIRPLUS) or up to the fixed size (INIT, checked further).</summary>
        UpTo,
    }

    internal readonly record struct ReplyShape(ReplyKind Kind, int Fixed)
    {
        public static ReplyShape Exact(int size) => new(ReplyKind.Exact, size);

        public static ReplyShape UpTo(int fixedSize = 0) => new(ReplyKind.UpTo, fixedSize);
    }

    /// <summary>A request on the wire and, once <see cref="Completed"/>, its validated outcome.</summary>
    internal sealed class Call(FuseOpcode opcode, ulong unique, Slot slot, ReplyShape reply, DataPart data)
    {
        public FuseOpcode Opcode { get; } = opcode;

        public ulong Unique { get; } = unique;

        public Slot Slot { get; } = slot;

        public ReplyShape Reply { get; } = reply;

        public DataPart Data { get; } = data;

        public bool Completed { get; set; }

        /// <summary>The positive errno of an error reply, else 0.</summary>
        public int Error { get; set; }

        /// <summary>Bytes after the out header.</summary>
        public int PayloadLength { get; set; }

        /// <summary>Of those, bytes in the control area (the rest is in the data buffer).</summary>
        public int FixedLength { get; set; }

        /// <summary>Bytes of the payload in the slot's data buffer.</summary>
        public int DataLength => PayloadLength - FixedLength;
    }
}
