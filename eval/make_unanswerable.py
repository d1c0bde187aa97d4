"""Generate eval/dev_unanswerable.jsonl: plausible questions about the dev corpus's subjects that it cannot answer.

Each question pairs a subject the corpus covers (Debian administration, LilyPond engraving, LinuxCNC machine
control) with a fact the documents never state (prices, dates, people, vendors, other products, policies).
Run from the repository root: python eval/make_unanswerable.py
"""
import json
import zlib
from pathlib import Path

SUBJECT_FACTS = [
    # (subject, question)
    ("debian", "Debian 官方镜像站在中国大陆的服务器由哪家公司赞助？"),
    ("debian", "Debian 项目负责人每届任期的年薪是多少？"),
    ("debian", "Debian 参考手册的作者获得过哪些奖项？"),
    ("debian", "在 Debian 上玩 Steam 游戏需要购买哪种显卡？"),
    ("debian", "Debian 官方商店出售的纪念 T 恤多少钱一件？"),
    ("debian", "Debian 开发者大会 2019 年在哪个城市举办？"),
    ("debian", "Debian 系统的电话技术支持热线号码是多少？"),
    ("debian", "购买 Debian 企业版授权每台服务器每年多少钱？"),
    ("debian", "Debian 的吉祥物漩涡标志是由哪位设计师画的？"),
    ("debian", "用 apt 安装微信电脑版需要添加哪个软件源？"),
    ("debian", "Debian 的安装光盘在哪家书店可以买到？"),
    ("debian", "Debian 系统自带的杀毒软件每天几点自动扫描？"),
    ("debian", "Debian 用户论坛的管理员每月工资多少？"),
    ("debian", "Debian 笔记本电脑的电池一般能用几年？"),
    ("debian", "Which company pays for the electricity of the Debian build servers?"),
    ("debian", "How much does a Debian Long Term Support subscription cost per year?"),
    ("debian", "What is the phone number of the Debian security team?"),
    ("lilypond", "LilyPond 的商业授权每年收费多少？"),
    ("lilypond", "LilyPond 开发团队的办公室在哪条街上？"),
    ("lilypond", "LilyPond 排版的乐谱在音乐比赛中获得过什么名次？"),
    ("lilypond", "用 LilyPond 写一首交响乐平均需要多少个小时？"),
    ("lilypond", "LilyPond 官方的微信公众号叫什么名字？"),
    ("lilypond", "LilyPond 的创始人毕业于哪所大学？"),
    ("lilypond", "Which orchestra uses LilyPond for all of its concert parts?"),
    ("lilypond", "How much does the LilyPond iPad app cost in the App Store?"),
    ("lilypond", "What was the attendance at the last LilyPond user conference?"),
    ("lilypond", "Which piano brand does the LilyPond team recommend for proofreading scores?"),
    ("lilypond", "How many copies of the LilyPond learning manual were printed on paper?"),
    ("lilypond", "What salary do LilyPond core developers receive?"),
    ("linuxcnc", "LinuxCNC 控制的数控铣床每台售价是多少？"),
    ("linuxcnc", "LinuxCNC 在中国的官方代理商是哪家公司？"),
    ("linuxcnc", "使用 LinuxCNC 加工一个铝合金零件的平均电费是多少？"),
    ("linuxcnc", "LinuxCNC 操作员培训课程的学费是多少？"),
    ("linuxcnc", "LinuxCNC 的开发者每年在哪里举办年会？"),
    ("linuxcnc", "What is the retail price of a LinuxCNC-ready milling machine?"),
    ("linuxcnc", "Which insurance company covers accidents on LinuxCNC machines?"),
    ("linuxcnc", "How many factories in Germany run LinuxCNC in production?"),
    ("linuxcnc", "What is the warranty period for spindles sold by the LinuxCNC project?"),
    ("linuxcnc", "Which university offers a degree course in LinuxCNC programming?"),
    ("linuxcnc", "How much does the LinuxCNC certification exam cost?"),
    ("linuxcnc", "What is the recommended coffee break interval for LinuxCNC machine operators?"),
    ("linuxcnc", "Who won the LinuxCNC machining competition in 2020?"),
    ("linuxcnc", "What is the email address of the LinuxCNC sales department?"),
    ("debian", "Debian 的安装程序支持用语音控制分区吗，需要说什么口令？"),
    ("lilypond", "LilyPond 能否把手机拍摄的纸质乐谱照片自动识别成 .ly 文件，识别准确率是多少？"),
    ("linuxcnc", "LinuxCNC 的触摸屏界面支持哪些手势来缩放刀具路径，双指张开的灵敏度怎么设置？"),
]


def main() -> None:
    lines = []
    for number, (subject, question) in enumerate(SUBJECT_FACTS, 1):
        qid = f"u{number:03d}"
        split = "tune" if zlib.crc32(qid.encode()) % 2 == 0 else "test"
        lines.append(json.dumps({"id": qid, "question": question, "evidence": [], "source": "", "split": split,
                                 "subject": subject}, ensure_ascii=False))
    Path("eval/dev_unanswerable.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} questions")


if __name__ == "__main__":
    main()
