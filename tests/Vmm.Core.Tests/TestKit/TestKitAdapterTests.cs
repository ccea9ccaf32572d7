using Akka.Actor;
using NUnit.Framework;
using Vmm.TestKit;

namespace Vmm.Core.Tests.TestKit;

[TestFixture]
public sealed class TestKitAdapterTests : AkkaTest
{
    private static readonly List<ActorSystem> SystemsSeen = [];

    [Test]
    public async Task TestKit_must_receive_an_expected_message()
    {
        var echo = Sys.ActorOf(Echo.Props(), "echo");

        echo.Tell(new Ping(1), TestActor);

        var pong = await ExpectMsgAsync<Pong>();
        Assert.That(pong.Id, Is.EqualTo(1));
    }

    [Test]
    public void TestKit_must_report_a_wrong_message_as_an_NUnit_assertion()
    {
        var probe = CreateTestProbe();
        probe.Ref.Tell(new Ping(2));

        var ex = Assert.Throws<AssertionException>(() => probe.ExpectMsg<Pong>(TimeSpan.FromSeconds(1)));
        Assert.That(ex!.Message, Does.Contain(nameof(Pong)));
    }

    [Test]
    public async Task TestKit_must_report_a_wrong_message_value_as_an_NUnit_assertion()
    {
        var probe = CreateTestProbe();
        probe.Ref.Tell(new Ping(3));

        await Assert.ThrowsAsync<AssertionException>(
            async () => await probe.ExpectMsgAsync(new Ping(4), TimeSpan.FromSeconds(1)));
    }

    [Test]
    public async Task TestKit_must_report_an_unexpected_message_as_an_NUnit_assertion()
    {
        var probe = CreateTestProbe();
        probe.Ref.Tell(new Ping(5));

        await Assert.ThrowsAsync<AssertionException>(
            async () => await probe.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(300)));
    }

    [Test]
    public async Task TestKit_must_report_a_missing_message_as_an_NUnit_assertion()
    {
        var probe = CreateTestProbe();

        await Assert.ThrowsAsync<AssertionException>(
            async () => await probe.ExpectMsgAsync<Ping>(TimeSpan.FromMilliseconds(200)));
    }

    [Test]
    public async Task TestKit_must_complete_an_Ask_round_trip()
    {
        var echo = Sys.ActorOf(Echo.Props(), "echo");

        var pong = await echo.Ask<Pong>(new Ping(6), TimeSpan.FromSeconds(3));

        Assert.That(pong, Is.EqualTo(new Pong(6)));
    }

    [TestCase(1)]
    [TestCase(2)]
    public void TestKit_must_give_each_test_a_fresh_system(int run)
    {
        lock (SystemsSeen)
        {
            Assert.That(SystemsSeen, Has.None.SameAs(Sys), $"run {run} reused an ActorSystem");
            SystemsSeen.Add(Sys);
        }

        Assert.That(Sys.WhenTerminated.IsCompleted, Is.False);
        // A fixed child name would clash if the system were shared between tests.
        Assert.DoesNotThrow(() => Sys.ActorOf(Echo.Props(), "echo"));
    }

    [Test]
    public void TestKit_must_name_the_system_after_the_test()
    {
        Assert.That(Sys.Name, Is.EqualTo("test-TestKit-must-name-the-system-after-the-test"));
    }

    [TestCase("a_b c.d", ExpectedResult = "test-a-b-c-d")]
    [TestCase(null, ExpectedResult = "test-")]
    public string TestKit_must_sanitize_system_names(string? name) => AkkaTest.SystemNameFor(name);

    #region Infrastructure

    private sealed record Ping(int Id);

    private sealed record Pong(int Id);

    private sealed class Echo : ReceiveActor
    {
        public Echo()
        {
            Receive<Ping>(OnPing);
        }

        public static Props Props() => Akka.Actor.Props.Create(() => new Echo());

        private void OnPing(Ping ping) => Sender.Tell(new Pong(ping.Id));
    }

    #endregion
}
