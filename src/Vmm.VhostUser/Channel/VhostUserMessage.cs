using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vmm.Core.Posix;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Channel;

/// <summary>
/// One received vhost-user message: header, payload and the fds that came with it. It owns
/// the fds: <see cref="Dispose"/> closes every fd not taken with <see cref="TakeFd"/>.
/// </summary>
public sealed class VhostUserMessage : IDisposable
{
    private static readonly SafeFileDescriptor[] s_noFds = [];

    private readonly SafeFileDescriptor[] _fds;
    private readonly bool[] _taken;
    private byte[]? _rentedPayload;
    private ReadOnlyMemory<byte> _payload;

    internal VhostUserMessage(VhostUserHeader header, byte[]? rentedPayload, int payloadLength, List<SafeFileDescriptor> fds)
    {
        Header = header;
        _rentedPayload = rentedPayload;
        _payload = rentedPayload is null ? ReadOnlyMemory<byte>.Empty : rentedPayload.AsMemory(0, payloadLength);
        _fds = fds.Count == 0 ? s_noFds : fds.ToArray();
        _taken = new bool[_fds.Length];
    }

    public VhostUserHeader Header { get; }

    /// <summary>The payload bytes; valid until <see cref="Dispose"/> (the buffer is pooled).</summary>
    public ReadOnlyMemory<byte> Payload => _payload;

    /// <summary>The fds received with this message, in order; still owned by the message.</summary>
    public IReadOnlyList<SafeFileDescriptor> Fds => _fds;

    /// <summary>Transfers ownership of fd <paramref name="index"/> to the caller, who must dispose it.</summary>
    public SafeFileDescriptor TakeFd(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, _fds.Length);
        lock (_taken)
        {
            if (_taken[index])
            {
                throw new InvalidOperationException($"Fd {index} of this message was already taken.");
            }

            _taken[index] = true;
            return _fds[index];
        }
    }

    /// <summary>
    /// Reads a <typeparamref name="T"/> from the payload at <paramref name="offset"/>; the
    /// payload must hold all of it (else <see cref="VhostUserProtocolException"/>).
    /// </summary>
    public T ReadPayload<T>(int offset = 0)
        where T : unmanaged
    {
        int size = Unsafe.SizeOf<T>();
        if (offset < 0 || (long)offset + size > _payload.Length)
        {
            throw new VhostUserProtocolException(
                $"Request {Header.Request}: payload of {_payload.Length} bytes has no {typeof(T).Name} ({size} bytes) at offset {offset}.");
        }

        return MemoryMarshal.Read<T>(_payload.Span.Slice(offset, size));
    }

    public void Dispose()
    {
        lock (_taken)
        {
            for (int i = 0; i < _fds.Length; i++)
            {
                if (!_taken[i])
                {
                    _taken[i] = true;
                    _fds[i].Dispose();
                }
            }
        }

        byte[]? rented = Interlocked.Exchange(ref _rentedPayload, null);
        if (rented is not null)
        {
            _payload = ReadOnlyMemory<byte>.Empty;
            ArrayPool<byte>.Shared.Return(rented);
        }
    }
}
