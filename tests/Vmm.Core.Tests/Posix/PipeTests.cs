using NUnit.Framework;
using Vmm.Core.Posix;

namespace Vmm.Core.Tests.Posix;

[TestFixture]
public sealed class PipeTests
{
    [Test]
    public async Task Bytes_larger_than_the_pipe_buffer_arrive_whole_and_end_at_close()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        byte[] data = new byte[1 << 20];
        new Random(5).NextBytes(data);
        using (read)
        {
            Task writer = Task.Run(() =>
            {
                using (write)
                {
                    Pipe.WriteAll(write, data);
                }
            });
            byte[] got = await Task.Run(() => Pipe.ReadToEnd(read, data.Length));
            await writer;
            Assert.That(got, Is.EqualTo(data));
        }
    }

    [Test]
    public async Task More_than_the_limit_is_refused_without_growing_past_it()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        {
            Task writer = Task.Run(() =>
            {
                using (write)
                {
                    try
                    {
                        Pipe.WriteAll(write, new byte[200_000]);
                    }
                    catch (PosixException)
                    {
                        // EPIPE once the reader gave up.
                    }
                }
            });
            Assert.That(() => Pipe.ReadToEnd(read, 100_000), Throws.InstanceOf<InvalidDataException>());
            read.Dispose();
            await writer;
        }
    }

    [Test]
    public void A_write_to_a_reader_that_never_reads_ends_at_its_deadline()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        using (write)
        {
            // More than the pipe holds (64 KiB): the writer must wait for a reader that never comes.
            Assert.That(
                () => Pipe.WriteAll(write, new byte[1 << 20], TimeSpan.FromMilliseconds(200), CancellationToken.None),
                Throws.InstanceOf<TimeoutException>());
            Assert.That(FileDescriptors.IsNonBlocking(write), Is.True);
        }
    }

    [Test]
    public void A_read_from_a_writer_that_never_closes_ends_at_its_deadline()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        using (write)
        {
            Pipe.WriteAll(write, new byte[10]);
            Assert.That(
                () => Pipe.ReadToEnd(read, 1000, TimeSpan.FromMilliseconds(200), CancellationToken.None),
                Throws.InstanceOf<TimeoutException>());
        }
    }

    [Test]
    public async Task Cancellation_ends_a_blocked_transfer()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        using (write)
        using (var cancel = new CancellationTokenSource())
        {
            Task reader = Task.Factory.StartNew(
                () => Pipe.ReadToEnd(read, 1000, Timeout.InfiniteTimeSpan, cancel.Token), TaskCreationOptions.LongRunning);
            await Task.Delay(50);
            Assert.That(reader.IsCompleted, Is.False);

            await cancel.CancelAsync();

            Assert.That(async () => await reader.WaitAsync(TimeSpan.FromSeconds(30)), Throws.InstanceOf<OperationCanceledException>());
        }
    }

    [Test]
    public void A_write_to_a_closed_reader_fails_with_EPIPE()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        read.Dispose();
        using (write)
        {
            PosixException e = Assert.Throws<PosixException>(() => Pipe.WriteAll(write, new byte[10], TimeSpan.FromSeconds(10), CancellationToken.None))!;
            Assert.That(e.Errno, Is.EqualTo(32), "EPIPE");
        }
    }

    [Test]
    public void Both_ends_are_descriptors_that_are_released()
    {
        int before = OpenFds();
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        Assert.That(OpenFds(), Is.EqualTo(before + 2));
        read.Dispose();
        write.Dispose();
        Assert.That(OpenFds(), Is.EqualTo(before));
    }

    /// <summary>Every open descriptor (proc(5)); nothing else runs between the counts here.</summary>
    private static int OpenFds() => Directory.GetFileSystemEntries("/proc/self/fd").Length;
}
